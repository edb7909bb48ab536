"""Natural-language captions for toy-world scenes.

Every caption names at least one object by its class name exactly as in `toy_world.CLASSES`; in about one
multi-object scene in six it names only some of the objects.
"""
PARTIAL_PROB = 0.17

NUMBER_WORDS = {2: "two", 3: "three"}

SURFACES = ("floor", "wall")

SCENE_TEMPLATES = (
    "{objects}",
    "a photo of {objects}",
    "there is {objects} here",
    "{objects} on a {background} floor",
    "{objects} in front of a {background} wall",
    "a picture showing {objects}",
    "a {background} {surface} with {objects}",
    "{objects}, drawn on a {background} {surface}",
    "a drawing of {objects} on a {background} background",
)


def with_article(phrase):
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _size_word(obj, size):
    if obj.radius < 0.16 * size:
        return "small"
    if obj.radius > 0.25 * size:
        return "large"
    return ""


def describe(obj, size, rng):
    """Noun phrase of one object with its article, e.g. 'a small red star'."""
    words = []
    if rng.random() < 0.4:
        words.append(_size_word(obj, size))
    if rng.random() < 0.8:
        words.append(obj.colour)
    words.append(obj.name)
    return with_article(" ".join(w for w in words if w))


def join_phrases(phrases):
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def relation(first, second):
    """Where `first` is relative to `second`, in image coordinates (y grows downwards)."""
    dx, dy = first.cx - second.cx, first.cy - second.cy
    if abs(dx) >= abs(dy):
        return "to the left of" if dx < 0 else "to the right of"
    return "above" if dy < 0 else "below"


def caption(scene, size, rng):
    """One caption for a Scene (see toy_world.render_scene); rng: numpy Generator (consumed)."""
    objects = list(scene.objects)
    n = len(objects)
    if n > 1 and rng.random() < PARTIAL_PROB:
        keep = sorted(rng.choice(n, size=int(rng.integers(1, n)), replace=False))
        objects = [objects[i] for i in keep]
    partial = len(objects) < n
    phrases = [describe(o, size, rng) for o in objects]
    background = scene.background
    style = rng.random()
    if len(objects) == 2 and not partial and style < 0.3:
        first, second = (phrases[0], phrases[1]) if rng.random() < 0.5 else (phrases[1], phrases[0])
        a, b = (objects[0], objects[1]) if first == phrases[0] else (objects[1], objects[0])
        linker = relation(a, b) if rng.random() < 0.6 else str(rng.choice(["beside", "next to", "near"]))
        return f"{first} {linker} {second} on a {background} {rng.choice(SURFACES)}"
    if len(objects) > 1 and style < 0.5:
        lead = "a few objects, including" if partial else f"{NUMBER_WORDS[len(objects)]} objects:"
        return f"{lead} {join_phrases(phrases)}"
    template = str(rng.choice(SCENE_TEMPLATES))
    return template.format(objects=join_phrases(phrases), background=background, surface=rng.choice(SURFACES))
