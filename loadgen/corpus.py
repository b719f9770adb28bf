"""English prose that synthetic prompts are cut from.

Written for this project and released with it. Plain, common words keep the token count of a
typical BPE tokenizer close to one token per word or punctuation mark, so a prompt of about N
tokens can be cut without the server's tokenizer. It lives in a module rather than a data file
so that it ships in every install of the package.
"""

TEXT = """\
The town stood where two rivers met, and most of its streets ran down to the water. In the early
morning the boats came in with fish, bread and letters from the towns upstream. People said that
the bridge was older than the church, and the church was older than anyone could remember. Every
house had a small garden, and every garden had at least one tree that gave fruit in the late
summer. Children walked to school along the river path, counting the ducks and throwing stones
into the current. The school had four rooms, a bell that was rung by hand, and a long shelf of
books that nobody was allowed to take home. The teacher was a patient woman who believed that a
good question was worth more than a quick answer. She asked her students to write down one thing
they had noticed each day, however small it seemed.

Over the years those notes filled a whole cupboard, and they became the only history the town
ever had. In spring the rivers rose with melted snow from the hills, and the low fields turned
into shallow lakes. Farmers moved their animals to higher ground and waited for the water to go
back where it belonged. When the fields dried, the soil was dark and rich, and the first green
shoots came up within a week. The market was held on the square every Saturday, rain or shine,
from sunrise until the church bell rang at noon. There were tables of eggs and cheese, baskets
of apples, jars of honey, and piles of warm bread wrapped in cloth. A man with a cart sold
knives and scissors, and he would sharpen your old ones while you waited. An old woman sold
seeds in paper bags, and she wrote the name of each plant on the bag in careful letters.

Visitors often asked for directions, and the answer was almost always the same: follow the
river. The road to the city was long and dusty, and it took a full day by horse and two days on
foot. Most people made the journey only a few times in their lives, for a wedding, a funeral, or
a matter of law. Those who came back brought stories of tall buildings, crowded streets and
shops that never closed. The young listened with wide eyes, and some of them left as soon as
they were old enough to go. Others stayed, married, and built their own houses a little further
up the hill each year. In summer the evenings were long and warm, and families sat outside until
the light was gone. The baker opened his doors before dawn, and the smell of bread reached every
corner of the town.

He worked alone for many years, and then his daughter joined him and started making cakes on
Sundays. Her cakes became so popular that people from the next valley came to buy them, and the
shop grew. The miller ground grain for the whole region, using a wheel that turned with the flow
of the smaller river. When the river was low in a dry year, the wheel moved slowly and the flour
was ground late into the night. The blacksmith made tools, gates and nails, and he repaired
anything made of iron that people brought to him. His forge was the warmest place in town during
winter, and children liked to stand near the open door. Autumn came with heavy rain and strong
winds that carried the last leaves across the square. The harvest was brought in, counted and
stored, and the town held a festival to give thanks for it.

There was music on the bridge, long tables of food, and dancing that went on well after
midnight. In winter the rivers froze at the edges, and on the coldest days the ice reached all
the way across. People skated on the ice and pulled sleds loaded with wood from the forest on
the far bank. The nights were long, so people read, mended clothes, told stories and went to bed
early. The library was a single room above the post office, with a stove, two tables and a few
hundred books. The librarian kept a list of every book that was borrowed, and she knew which
ones were never returned. She said that a book that is never returned is still a book that was
read, and so she did not mind. A doctor came once a week from the next town, and he saw patients
in a room at the back of the inn.

He carried a black bag with instruments, bottles of medicine and a small notebook full of names.
Most of his work was simple: a fever, a broken arm, a cough that would not go away in the cold
months. The inn had six rooms, a kitchen that served soup all day, and a yard where travelers
could leave their horses. The owner liked to hear news from other places, and he gave a free
meal to anyone with a good story. Over time the inn became a place where people met to trade,
argue and make plans for the town. One year the town decided to build a second bridge, because
the old one could no longer carry heavy carts. Everyone helped in some way, carrying stones,
cooking meals for the workers or lending tools and animals. The work took three summers, and
when it was done the whole town walked across the new bridge together.

The old bridge was kept for people on foot, and it became the favorite place to watch the sun go
down. A railway line reached the valley many years later, and the station was built on the flat
land to the east. Trains brought goods faster than the boats had ever done, and the river trade
slowly came to an end. Some people were sad to see the boats go, but others were glad that the
city was now only a few hours away. New families arrived, new houses went up, and the school
added two more rooms and a second teacher. The square was paved with stone, and lamps were put
up along the main street so that it was bright at night. Still, the market was held every
Saturday, and the old woman's granddaughter now sold seeds in paper bags. Each spring the rivers
still rose, and each summer the gardens still gave their fruit.

A careful reader of the cupboard of notes could follow the life of the town one small thing at a
time. One note said that the first swallows had come back, and another said that a child had
lost a tooth. One said that the baker had burned the bread, and the next day another said that
the bread was good again. Taken together, the notes showed that most days were ordinary, and
that ordinary days were worth writing down. A good map of the valley shows the two rivers, the
hills to the north and the forest on the far bank. It also shows the roads, the railway, the
mill, and the small paths that only people from the town know. Maps change slowly, but the land
they describe changes all the time, with every flood and every season. The people who draw maps
must decide what to include and what to leave out, and that choice is never simple.

A map that shows everything is as useless as a map that shows nothing, because no one can read
it. The same is true of a story: the teller must choose which parts matter and let the others
fall away. Water is the reason the town exists, and it is also the thing that people in the town
worry about most. Too much water floods the fields, and too little water stops the mill and
dries the gardens. Over many years the town learned to build walls of earth along the low fields
and to store water in ponds. Those walls and ponds are still there, covered in grass, and most
visitors do not notice them at all. The hills to the north are covered in pine trees, and in the
clear air you can see them from far away. A path climbs from the edge of town to the top of the
nearest hill, where there is a stone bench.

From the bench you can see both rivers, the roofs of the town, the fields, and on a good day the
city. Many people have sat on that bench to think about a hard choice, and many have come down
with an answer. The bench has names carved into it, some so old that the letters can barely be
read. When the weather turns, the wind comes down from the hills, and the whole valley smells of
pine and rain.
"""
