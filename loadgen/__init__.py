"""Load generator: measures TTFT, TPOT, SLO attainment and goodput of any OpenAI-compatible
server (`pdserve bench`). It imports nothing else of pdserve, so it benchmarks vLLM, SGLang
or Dynamo the same way it benchmarks pdserve.

workload -> arrivals -> runner (client over connections) -> metrics -> result/report/plots;
goodput repeats runs at the rates it searches; cli ties them together.
"""
