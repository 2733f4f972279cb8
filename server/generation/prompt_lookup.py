"""Prompt lookup decoding: draft tokens for a sequence from its own tokens. Where the sequence's last few
tokens (4, else 3, else 2) occurred before, in its prompt or its output, the tokens that followed their
latest occurrence are the draft; one run of the model checks them all (`DecodeRun`). A draft only
saves runs: each position's token is still sampled as a step of its own would sample it, from that
position's logits in the run (which a prefill would compute the same way), so drafts change how many
runs a text takes, not how its tokens are chosen."""

NGRAM_SIZES = (4, 3, 2)


class PromptLookup:
    """One sequence's n-grams and where the tokens after each one's latest occurrence start. Used on the
    decoding thread only."""

    def __init__(self, prompt: list[int], tokens: int, budget: int):
        """`tokens`: the most drafted per run; `budget`: the most tokens the sequence may generate (a run
        never drafts past it)."""
        self.seen = list(prompt)
        self.prompt_length = len(prompt)
        self.tokens, self.budget = tokens, budget
        self.after: dict[tuple[int, ...], int] = {}
        self.indexed = 0  # the n-grams ending before this position are in `after`

    def draft(self, generated: list[int]) -> list[int]:
        """The tokens likely to follow `generated` (the sequence's output so far, which only grows)."""
        seen = self.seen
        seen.extend(generated[len(seen) - self.prompt_length:])
        last = len(seen) - 1  # the n-grams ending here are looked up, the earlier ones indexed
        for end in range(self.indexed, last):
            for size in NGRAM_SIZES:
                if end + 1 >= size:
                    self.after[tuple(seen[end + 1 - size:end + 1])] = end + 1
        self.indexed = last
        room = min(self.tokens, self.budget - len(generated) - 1)
        if room <= 0:
            return []
        for size in NGRAM_SIZES:
            start = self.after.get(tuple(seen[last + 1 - size:])) if last + 1 >= size else None
            if start is not None:
                return seen[start:start + room]
        return []
