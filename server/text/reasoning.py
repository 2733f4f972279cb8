"""A reasoning model's thinking apart from its answer, as vLLM's reasoning parsers read Qwen 3's and
DeepSeek-R1's: the text inside `<think>` ... `</think>` is reasoning, the text after it the answer. A
model is one when its chat template cuts `</think>` blocks out of the history; its answer starts inside
the block when the prompt ends by opening one (DeepSeek-R1's templates do), else only when the answer
opens one itself."""

import json

from server.text.markers import held_back

OPEN, CLOSE = "<think>", "</think>"


def reasoning_template(source: str) -> bool:
    return CLOSE in source


def opens_reasoning(prompt_tail: str) -> bool:
    """Whether a prompt ending in `prompt_tail` leaves the answer inside a `<think>` block."""
    return prompt_tail.rstrip().endswith(OPEN)


def thinking_grammar(opened: bool, marker_tokens: bool) -> str:
    """The Lark rules (llguidance's) of a thinking block that comes free ahead of a grammar's answer, as
    vLLM's structured outputs leave a reasoning model's thinking: `start` is the block (required where the
    prompt `opened` it, else optional), then `@answer`. `marker_tokens`: the tokenizer has `<think>` and
    `</think>` as tokens of their own (Qwen 3's), which the model writes rather than their letters."""
    if marker_tokens:  # the thought's text holds neither the token nor the marker's letters
        opening, thought = OPEN, [f"thought: THOUGHT? {CLOSE} GAP?",
                                  r"THOUGHT: /(.|\n)+/ & ~/(.|\n)*<\/think>(.|\n)*/"]
    else:  # the shortest text that ends in the marker
        opening, thought = json.dumps(OPEN), ["thought: closed GAP?", r"closed[lazy]: /(.|\n)*<\/think>/"]
    start = "start: thought @answer" if opened else f"start: ({opening} thought)? @answer"
    return "\n".join([start, *thought, r"GAP: /\s+/"])


def split(text: str, opened: bool) -> tuple[str | None, str]:
    """(reasoning, answer); reasoning None where the text has none."""
    stream = ReasoningStream(opened)
    reasoning, answer = stream.push(text, final=True)
    return (reasoning if stream.reasoned else None), answer


class ReasoningStream:
    """One answer's text as it comes, cut into its reasoning and its answer pieces. Text that may still
    turn out to be the start of `<think>` or of `</think>` is held until the next piece decides it."""

    def __init__(self, opened: bool):
        self.mode = "reasoning" if opened else "start"
        self.reasoned = opened
        self.held = ""
        self.trim = False  # the answer's leading white space after `</think>` is dropped

    def push(self, piece: str, final: bool) -> tuple[str, str]:
        """(reasoning, answer) pieces that are now certain."""
        self.held += piece
        reasoning = ""
        if self.mode == "start":
            lead = self.held.lstrip()
            if lead.startswith(OPEN):
                self.mode, self.reasoned, self.held = "reasoning", True, lead[len(OPEN):]
            elif not final and OPEN.startswith(lead):  # white space, or the start of `<think>`
                return "", ""
            else:
                self.mode = "answer"
        if self.mode == "reasoning":
            end = self.held.find(CLOSE)
            if end >= 0:
                reasoning, self.held = self.held[:end], self.held[end + len(CLOSE):]
                self.mode, self.trim = "answer", True
            else:
                keep = 0 if final else held_back(self.held, (CLOSE,))
                reasoning, self.held = self.held[:len(self.held) - keep], self.held[len(self.held) - keep:]
                return reasoning, ""
        answer, self.held = self.held, ""
        if self.trim:
            answer = answer.lstrip()
            self.trim = not answer
        return reasoning, answer

