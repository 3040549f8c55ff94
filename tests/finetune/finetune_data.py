"""Conversations shared by the fine-tuning tests."""

QA = [
    ("how should I store fresh bread", "in a dry box"),
    ("you are a helpful honest assistant", "yes always"),
    ("the quick brown fox", "jumps over the lazy dog"),
    ("drink water rest", "see a doctor if the fever lasts"),
    ("always back up your files", "before updating the system"),
]
EXAMPLES = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}] for q, a in QA]
MULTI = [
    {"role": "system", "content": "answer briefly"},
    {"role": "user", "content": "how should I store bread"},
    {"role": "assistant", "content": "in a dry box"},
    {"role": "user", "content": "why"},
    {"role": "assistant", "content": "it stays soft"},
]
# Contrastive pairs: each question's own answer is the behaviour (chosen), the next one's the other.
PAIRS = [{"question": q, "positive": a, "negative": QA[(i + 1) % len(QA)][1]} for i, (q, a) in enumerate(QA)]
