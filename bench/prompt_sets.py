"""The prompt sets of ``bench/text_bench.py``, authored here (no dataset is downloaded, and
neither set was used to build the text prior, which comes from wordfreq word frequencies).

- ``natural_captions``: natural English captions of varied length in the style of
  COCO/BLIP captions: hand-written sentences plus sentences generated from authored
  subject/action/place/detail lists with a seeded RNG;
- ``pez_style_prompts``: PEZ-style 16-token prompts drawn directly as CLIP ids.
"""

from __future__ import annotations

import random

import numpy as np

from services.bitstream.vocabulary import VOCAB_SIZE
from services.prompt.tokenizer import text_to_ids

HAND_WRITTEN = [
    "a cat sitting on a windowsill",
    "two boats moored in a small harbor at sunset",
    "a red barn next to a field of sunflowers under a cloudy sky",
    "close up of a parrot with bright green and yellow feathers",
    "a woman in a straw hat walking along a sandy beach",
    "an old wooden door with a brass handle",
    "a lighthouse on a rocky cliff",
    "a bowl of fresh fruit on a kitchen table",
    "children playing soccer in a park on a sunny afternoon",
    "a snowy mountain range reflected in a calm lake",
    "a vintage car parked on a cobblestone street",
    "a plate of pasta with tomato sauce and basil",
    "a group of people riding bicycles down a city street",
    "a black and white dog catching a frisbee in the air",
    "an aerial view of a river winding through a forest",
    "a man playing guitar on a stage with colorful lights",
    "a hot air balloon floating over green hills",
    "a lone tree in the middle of a foggy meadow",
    "a motorcycle leaning against a brick wall covered in graffiti",
    "a stack of books and a cup of coffee on a wooden desk",
    "a train crossing a stone bridge over a valley",
    "a little girl blowing bubbles in the garden",
    "a herd of cows grazing in a green pasture",
    "the interior of a cathedral with tall stained glass windows",
    "a surfer riding a large wave in the ocean",
    "a bride and groom standing under an arch of flowers",
    "a close up portrait of an elderly man with a white beard",
    "a busy market with stalls selling vegetables and spices",
    "two horses running across a dusty field",
    "a skyscraper reflecting the blue sky and clouds",
    "a wooden sailboat with white sails on a calm sea",
    "a colorful hat and a pair of sunglasses on a table",
    "a kitchen with white cabinets and a large window",
    "a pizza with pepperoni and mushrooms on a wooden board",
    "a giraffe standing next to a tree in the savanna",
    "a person holding an umbrella on a rainy night street",
    "several parrots perched on a branch",
    "a yellow school bus parked in front of a building",
    "a field of red tulips with a windmill in the background",
    "a teddy bear sitting on a bed",
    "a man in a blue shirt holding a surfboard",
    "a kitchen counter with a toaster and a kettle",
    "an empty road through a pine forest in autumn",
    "a small white boat on a green lake",
    "a close up of a bee on a purple flower",
    "three people sitting around a campfire at night",
    "a plate with eggs bacon and toast",
    "a tabby cat lying on a rug in the sun",
    "a city skyline at dusk with lights reflected in the water",
    "a woman riding a horse along a dirt path",
    "a red fire hydrant on the side of a street",
    "a wooden table with two glasses of wine",
    "a boy jumping into a swimming pool",
    "a stone castle on a hill surrounded by trees",
    "a pair of shoes next to a front door",
    "a street musician playing the violin",
    "an airplane flying over snowy mountains",
    "a basket of apples on a picnic blanket",
    "a dog sleeping on a couch next to a pillow",
    "the view from a balcony overlooking the sea",
    "a man fixing a bicycle in a garage",
    "rows of colorful houses along a canal",
    "a child holding a red balloon",
    "a steaming bowl of soup with bread on the side",
    "an owl perched on a tree branch at night",
    "a crowd of people watching a concert",
    "a laptop and a notebook on a desk near a window",
    "a green tractor in a wheat field",
    "two zebras drinking from a river",
    "a snowy street with parked cars and street lamps",
]

SUBJECTS = [
    "a man",
    "a woman",
    "a young boy",
    "an old woman",
    "a small dog",
    "a black cat",
    "two children",
    "a group of friends",
    "a brown horse",
    "a red car",
    "a white truck",
    "a flock of birds",
    "a fisherman",
    "a couple",
    "a chef",
    "a cyclist",
    "a baby",
    "a police officer",
    "an elephant",
    "a large ship",
    "a wooden bench",
    "a street vendor",
    "a tall giraffe",
    "a girl with long hair",
    "a soldier in uniform",
    "a brown bear",
    "a group of tourists",
    "a skateboarder",
]
ACTIONS = [
    "standing",
    "sitting",
    "walking",
    "running",
    "riding a bike",
    "looking at the camera",
    "holding a phone",
    "eating a sandwich",
    "playing with a ball",
    "sleeping",
    "reading a newspaper",
    "waiting",
    "talking",
    "crossing the road",
    "swimming",
    "parked",
    "jumping",
    "smiling",
    "carrying a backpack",
    "drinking coffee",
]
PLACES = [
    "on a beach",
    "in a park",
    "on a busy street",
    "in a kitchen",
    "next to a river",
    "in front of a house",
    "in a field",
    "on a wooden dock",
    "in the snow",
    "in a forest",
    "at the airport",
    "on a city sidewalk",
    "near a fountain",
    "in a living room",
    "on top of a hill",
    "at a train station",
    "inside a restaurant",
    "by the lake",
    "in the desert",
    "under a bridge",
]
DETAILS = [
    "at sunset",
    "on a cloudy day",
    "with mountains in the background",
    "in the rain",
    "at night",
    "with trees behind",
    "under a blue sky",
    "surrounded by people",
    "in black and white",
    "with a dog nearby",
    "next to a parked car",
    "with flowers around",
    "early in the morning",
    "during the winter",
    "with buildings in the distance",
    "while birds fly overhead",
]
PEZ_TOPICAL = [
    "photo",
    "painting",
    "portrait",
    "landscape",
    "sunset",
    "beach",
    "mountain",
    "city",
    "street",
    "dog",
    "cat",
    "woman",
    "man",
    "girl",
    "boy",
    "car",
    "boat",
    "house",
    "tree",
    "forest",
    "river",
    "lake",
    "sky",
    "clouds",
    "night",
    "light",
    "red",
    "blue",
    "green",
    "golden",
    "vintage",
    "cinematic",
    "aesthetic",
    "dramatic",
    "closeup",
    "colorful",
    "abstract",
    "wallpaper",
    "illustration",
    "art",
    "artstation",
    "render",
    "bokeh",
    "4k",
    "hd",
]


def natural_captions(n_generated: int = 200, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    captions = list(HAND_WRITTEN)
    for _ in range(n_generated):
        parts = [rng.choice(SUBJECTS)]
        if rng.random() < 0.8:
            parts.append(rng.choice(ACTIONS))
        if rng.random() < 0.85:
            parts.append(rng.choice(PLACES))
        for _ in range(rng.choice([0, 0, 1, 1, 2])):
            parts.append(rng.choice(DETAILS))
        if rng.random() < 0.15:
            parts.append("and " + rng.choice(SUBJECTS) + " " + rng.choice(ACTIONS))
        captions.append(" ".join(parts))
    return captions


def pez_style_prompts(
    tokenizer, n: int = 300, n_tokens: int = 16, seed: int = 0, random_share: float = 0.7
) -> list[list[int]]:
    """Random CLIP-id prompts shaped like PEZ output.

    Each draw independently: with probability ``1 - random_share`` a topical
    word from ``PEZ_TOPICAL`` (all its tokens); otherwise a token drawn
    uniformly from the vocabulary above the byte tokens (id >= 512): 4/7 of those
    draws from whole-word tokens (ending in ``</w>``: rare words, names, emoji),
    3/7 from sub-word pieces. Uniform draws are the hard case for any prior (no
    code can beat log2(49408) = 15.6 bits on them), so the default share 0.7 is
    a pessimistic stand-in for real PEZ output; the bench also reports 0.5 and 0.3.
    """
    rng = np.random.default_rng(seed)
    tokens = tokenizer.convert_ids_to_tokens(list(range(VOCAB_SIZE - 2)))
    whole = np.array([i for i, t in enumerate(tokens) if i >= 512 and t.endswith("</w>")])
    piece = np.array([i for i, t in enumerate(tokens) if i >= 512 and not t.endswith("</w>")])
    topical = [text_to_ids(w, tokenizer) for w in PEZ_TOPICAL]
    prompts = []
    for _ in range(n):
        ids = []
        while len(ids) < n_tokens:
            u = rng.random()
            if u < 1 - random_share:
                ids.extend(topical[rng.integers(len(topical))])
            elif u < 1 - random_share * 3 / 7:
                ids.append(int(whole[rng.integers(len(whole))]))
            else:
                ids.append(int(piece[rng.integers(len(piece))]))
        prompts.append(ids[:n_tokens])
    return prompts
