"""General text that training holds the model to (``training.kl_weight``): what it must not forget.

Written by the project, short and varied like a general assistant's day (nature, geography, language,
cooking, health, arithmetic, how-to), and **disjoint from the evaluation's forgetting text**
(``data/general.py``, checked by a test): a regulariser fitted on the very text forgetting is
measured on would hide forgetting instead of preventing it.
"""

from __future__ import annotations

ANCHOR_CONVERSATIONS: tuple[tuple[str, str], ...] = (
    ("Why do leaves change colour in autumn?",
     "As days shorten, trees stop making green chlorophyll, and the yellow and orange pigments that were "
     "there all along show through."),
    ("What is the capital of Canada?", "The capital of Canada is Ottawa, in the province of Ontario."),
    ("How do bees make honey?",
     "Bees collect nectar from flowers, break its sugars down with enzymes and fan it with their wings until "
     "most of the water evaporates."),
    ("What does a barometer measure?", "A barometer measures air pressure, which helps to forecast the weather."),
    ("Give me an antonym for ancient.", "Modern is a common antonym for ancient; new and recent also work."),
    ("How many continents are there?",
     "There are seven continents: Africa, Antarctica, Asia, Australia, Europe, North America and South America."),
    ("What is a haiku?", "A haiku is a short Japanese poem of three lines, with five, seven and five syllables."),
    ("How can I keep bread fresh for longer?",
     "Keep it in a paper bag or a bread box at room temperature, or slice and freeze it for longer storage."),
    ("Why should I drink water when exercising?",
     "Sweating takes water from the body, and drinking replaces it, which keeps your temperature and energy "
     "steady."),
    ("What is fifteen plus twenty-seven?", "Fifteen plus twenty-seven is forty-two."),
    ("Explain what a verb is.", "A verb is a word for an action or a state, such as run, think or be."),
    ("What causes thunder?",
     "Lightning heats the air around it so quickly that the air expands with a bang, which we hear as thunder."),
    ("Which planet is known as the red planet?",
     "Mars is called the red planet because iron oxide, or rust, in its soil gives it a reddish colour."),
    ("How do I write a polite email declining an invitation?",
     "Thank the sender for the invitation, say briefly that you cannot attend, and wish them a good event."),
    ("What is the longest river in Africa?", "The Nile, at about 6,650 kilometres, is usually named the longest "
     "river in Africa."),
    ("How long should I rest a steak after cooking it?",
     "Let a steak rest for about five minutes so its juices settle before you cut it."),
    ("What is a prime number?",
     "A prime number is a whole number greater than one whose only divisors are one and itself, like 7 or 13."),
    ("Why does ice float on water?",
     "Water expands when it freezes, so ice is less dense than liquid water and floats on it."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa in the early sixteenth century."),
    ("What is the difference between weather and climate?",
     "Weather is the state of the air on a given day; climate is the usual pattern of weather over many years."),
    ("How do I convert kilometres to miles?", "Multiply the number of kilometres by about 0.62 to get miles."),
    ("What do plants need to grow?", "Plants need light, water, air, nutrients from the soil and a suitable "
     "temperature."),
    ("Suggest a name for a grey cat.", "Smoky, Ash or Pebble would all suit a grey cat."),
    ("What is an adjective?", "An adjective is a word that describes a noun, such as tall, blue or quiet."),
    ("How does a compass work?",
     "A compass needle is a small magnet that lines up with the Earth's magnetic field and points north."),
    ("What is half of one hundred and forty?", "Half of one hundred and forty is seventy."),
    ("Why is sleep important?",
     "Sleep lets the body repair itself and the brain sort memories, so we think and feel better when awake."),
    ("What language is spoken in Brazil?", "Portuguese is the official and most widely spoken language of Brazil."),
    ("How do I remove a coffee stain from a shirt?",
     "Rinse it from the back with cold water, rub in a little liquid detergent, then wash it as usual."),
    ("What is the speed of light?", "Light travels at about 300,000 kilometres per second in a vacuum."),
    ("Summarise the story of Cinderella in one sentence.",
     "A kind young woman mistreated by her stepfamily goes to a royal ball with a fairy godmother's help and "
     "marries the prince who finds her by her lost glass slipper."),
    ("What is recycling?",
     "Recycling is turning used materials such as paper, glass and metal into new products instead of "
     "throwing them away."),
)
