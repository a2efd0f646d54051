"""The default prompt list of a real pipeline run (``prompts_path: null``): written in-project,
varied subjects (animals, food, landscapes, cities, people, objects, styles), one per line of
what a user's ``prompts_path`` file would hold.
"""

PROMPTS: tuple[str, ...] = (
    "a red fox sitting in fresh snow at dawn",
    "a bowl of ramen with a soft boiled egg, top view",
    "an old lighthouse on a rocky coast during a storm",
    "a watercolor painting of a city street in the rain",
    "a close-up portrait of an elderly fisherman with a grey beard",
    "a bicycle leaning against a yellow wall",
    "a glass of orange juice on a wooden breakfast table",
    "a snowy mountain lake under the northern lights",
    "a robot reading a book in a library",
    "a field of sunflowers under a blue summer sky",
    "a cat sleeping on a stack of books",
    "a futuristic train crossing a desert bridge",
    "a child flying a kite on a windy beach",
    "a medieval castle on a green hill, oil painting",
    "a macro photo of a dragonfly on a leaf",
    "a cup of coffee with latte art shaped like a heart",
    "a busy night market with paper lanterns",
    "a vintage car parked in front of a diner",
    "an astronaut riding a horse on the moon",
    "a pile of autumn leaves in a park",
    "a hummingbird drinking from a red flower",
    "a wooden cabin in a pine forest covered in snow",
    "a plate of fresh sushi on a black slate",
    "a sailboat on a calm sea at sunset",
)
