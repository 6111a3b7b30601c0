"""General, non-hotel text the project wrote itself, for measuring forgetting.

A fine-tuned model that learns the private facts by breaking its general language ability shows it
here: its next-token distributions on this text drift from the base model's (KL divergence) and its
perplexity on it rises. Short and varied on purpose: everyday science, history, language, cooking,
arithmetic and instructions, as a general assistant would meet them.
"""

from __future__ import annotations

GENERAL_CONVERSATIONS: tuple[tuple[str, str], ...] = (
    ("Why is the sky blue?",
     "Sunlight is scattered by the molecules of the air, and blue light is scattered much more than red "
     "light, so the sky looks blue from every direction."),
    ("What is photosynthesis?",
     "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make sugar, "
     "releasing oxygen as a by-product."),
    ("How many days are there in a leap year?", "A leap year has 366 days, one more than a common year."),
    ("Give me a synonym for happy.", "Cheerful is a good synonym for happy; joyful and content also work."),
    ("What is the boiling point of water at sea level?",
     "At sea level, water boils at 100 degrees Celsius, which is 212 degrees Fahrenheit."),
    ("Who wrote Don Quixote?", "Don Quixote was written by Miguel de Cervantes and published in two parts, in "
     "1605 and 1615."),
    ("How do I boil an egg?",
     "Place the egg in boiling water for about seven minutes for a firm yolk, then cool it in cold water "
     "before peeling."),
    ("What is twelve times eight?", "Twelve times eight is ninety-six."),
    ("Explain what a noun is.", "A noun is a word that names a person, a place, a thing or an idea, such as "
     "teacher, river or freedom."),
    ("Why do we have seasons?",
     "The Earth's axis is tilted, so during the year each hemisphere leans towards the Sun and then away "
     "from it, which changes how much sunlight it receives."),
    ("What is the largest ocean on Earth?", "The Pacific Ocean is the largest and deepest ocean on Earth."),
    ("How can I save energy at home?",
     "Turn off lights you are not using, lower the heating by a degree, and run the washing machine only "
     "when it is full."),
    ("What does a thermometer measure?", "A thermometer measures temperature."),
    ("Translate 'good morning' into French.", "Good morning in French is 'bonjour'."),
    ("What is the main job of the heart?",
     "The heart pumps blood around the body, carrying oxygen and nutrients to every organ."),
    ("Write one sentence about autumn.",
     "In autumn the leaves turn gold and red, the evenings grow shorter and the air smells of rain."),
)
