from steerlab.formats.prompts import GENERIC_PROMPTS_PATH, generic_prompts


def test_generic_prompts_are_many_unique_and_non_empty():
    prompts = generic_prompts()
    assert len(prompts) >= 200
    assert all(isinstance(p, str) and p.strip() == p and p for p in prompts)
    assert len({p.lower() for p in prompts}) == len(prompts)
    lines = GENERIC_PROMPTS_PATH.read_text(encoding="utf-8").splitlines()
    assert lines == prompts  # one per line, no blank lines or stray whitespace in the shipped file


def test_generic_prompts_are_varied_and_behaviour_free():
    prompts = generic_prompts()
    text = " ".join(prompts).lower()
    for topic in ("python", "recipe", "trip", "how many", "explain", "write"):  # coding, cooking, travel, maths...
        assert topic in text, topic
    assert len({p.split()[0] for p in prompts}) >= 15  # not one template repeated
    for trait_word in ("evil", "deceiv", "lie to", "flatter", "sycophan", "rude", "joke", "hallucinat"):
        assert trait_word not in text, trait_word
