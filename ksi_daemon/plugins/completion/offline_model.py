"""The built-in offline model: deterministic, streaming, no key and no network.

It is what a fresh machine talks to. It cannot think, but it answers in terms of what it was told:
it picks out the prompt's key words, notices questions, remembers earlier turns of the
conversation and any system prompt, so the chat and orchestration demos show a real exchange.
The same conversation always gets the same answer, which also makes it useful in tests.

When agents talk to each other, the prompt is often another offline reply. Its stock phrases
("Answering as instructed", "The heart of it is", the quotes of older messages) are not what
that speaker said: key words come first from the prompt's own words, then from the words its
quoted offline sentences were about, and words of the system prompt come after the others.
"""
from __future__ import annotations

import asyncio
import hashlib
import re


PROVIDER = "ksi-offline"
DEFAULT_MODEL = f"{PROVIDER}/default"
WORDS_PER_CHUNK = 3
# Conversations longer than this are answered in a worker thread: the answer costs about a
# microsecond per 10 characters (linear), too long to hold the event loop for a long prompt.
ON_THE_LOOP_UP_TO_CHARS = 8_000

_WORD = re.compile(r"[A-Za-z][A-Za-z0-9'-]+")
_STOPWORDS = frozenset("""
a about above after again all also am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has
have having he her here hers him his how i if in into is it its itself just let me more most my
no nor not now of off on once only or other our out over own please same she should so some such
than that the their them then there these they this those through to too under until up very
was we were what when where which while who whom why will with would you your yours tell give
explain write make think say said using use like get one two first speak everything
anything something nothing else
""".split())

_OPENINGS = (
    "Here is how I see {topic}.",
    "Let me take up {topic}.",
    "Thinking about {topic}:",
    "On {topic}, a few points.",
)
_QUESTION_OPENINGS = (
    "You ask about {topic}.",
    "Good question about {topic}.",
    "About {topic}, since you ask:",
    "To answer your question on {topic}:",
)
_BODIES = (
    "The heart of it is {first}; everything else follows from how {first} relates to {second}.",
    "I would start from {first}, then check what {second} adds to it.",
    "It helps to separate {first} from {second} and look at each on its own terms.",
    "{First} is the part that matters most here, with {second} close behind.",
)

# When the prompt is another offline reply (agents talking to each other): take up its point.
_RETORTS = (
    "You made {first} your main point; I take it up, but not without {second}.",
    "I hear your point on {first}; it holds only as far as {second} allows.",
    "You keep coming back to {first}; what about {second}?",
    "Your case rests on {first}; mine weighs {second} as well.",
)

# The offline reply's fixed sentences, found again when a reply is quoted back to the model.
# Every variable part is bounded (quotes are clipped to 80 characters, slots hold a few words),
# so that a regex tried at each occurrence of a fixed phrase scans a bounded stretch: unbounded,
# a long prompt repeating one phrase would cost its length squared.
_MOST_IN_A_SLOT = 200
_NOTE = re.compile(r"\(Answering as instructed: [^)\"]{0,200}\)")
_HISTORY = re.compile(r"This is turn \d{1,12} of our conversation; earlier we talked about "
                      r"[^\"]{0,%d}?, and you first said \"[^\"]{0,200}\"\." % _MOST_IN_A_SLOT)
_ECHO = re.compile(r"You said: \"[^\"]{0,200}\"")
_SLOT = re.compile(r"\\\{(?:topic|first|second|First)\\\}")
_SLOT_TEXT = r'([^.;:"]{1,%d}?)' % _MOST_IN_A_SLOT
# A slot's text holds none of .;:" so the leftmost match of a template that starts with a slot
# starts just after one of them (or at the text's start): saying so makes the regex try only
# there, instead of scanning from every position of the prompt to its next full stop, which
# made a 20,000-character prompt without one take seconds (quadratic).
_AFTER_A_BREAK = r'(?<![^.;:"])'


def _template_regex(template: str) -> re.Pattern:
    pattern = _SLOT.sub(lambda _m: _SLOT_TEXT, re.escape(template))
    return re.compile(_AFTER_A_BREAK + pattern if template.startswith("{") else pattern)


_TEMPLATES = [_template_regex(template)
              for template in (*_OPENINGS, *_QUESTION_OPENINGS, *_BODIES, *_RETORTS)]
_FILLERS = ("the context around it", "your message")


def reply_to(messages: list[dict]) -> str:
    """The answer to `messages` (OpenAI-style dicts), the same every time for the same input."""
    said = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
    system = next((str(m.get("content") or "") for m in messages
                   if m.get("role") == "system"), "")
    last = said[-1] if said else ""
    words = key_words(last, avoid=system) or ["your message"]
    first, second = words[0], (words[1] if len(words) > 1 else "the context around it")
    topic = " and ".join(words[:2])
    pick = _stable_number(messages)
    openings = _QUESTION_OPENINGS if last.rstrip().endswith("?") else _OPENINGS
    sentences = []
    if system:
        note = _quote(system, 60).replace("(", "[").replace(")", "]")
        sentences.append(f"(Answering as instructed: {note})")
    sentences.append(openings[pick % len(openings)].format(topic=topic))
    sentences.append(_BODIES[pick // 7 % len(_BODIES)].format(
        first=first, second=second, First=first[:1].upper() + first[1:]))
    if _own_and_echoed(last)[1]:
        sentences.append(_RETORTS[pick // 31 % len(_RETORTS)].format(first=first, second=second))
    if len(said) > 1:
        earlier = key_words(" ".join(said[:-1]), limit=2, avoid=system)
        sentences.append(f"This is turn {len(said)} of our conversation; earlier we talked "
                         f"about {' and '.join(earlier) or 'other things'}, and you first said "
                         f"\"{_quote(said[0], 50)}\".")
    sentences.append(f"You said: \"{_quote(last, 80)}\"")
    return " ".join(sentences)


_TOOL_LINE = re.compile(r"^\s*/tool\s+(\S+)\s*(.*?)\s*$")


def tool_calls_for(messages: list[dict], offered: list[str]) -> list[dict] | None:
    """The tool calls the offline model makes, or None when it answers with text.

    Every `/tool NAME {json arguments}` line of the last user message becomes one call (all in
    one step: parallel calls), unless that message's tool results are already in `messages`.
    The call names the tool's model name when NAME is an offered tool (KSI or model name) and
    NAME itself otherwise, so that the loop refuses it; the arguments are passed as written,
    so that bad JSON reaches the loop too. Ids are deterministic: call_<messages>_<line>.
    """
    if not offered:
        return None
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    if last_user < 0 or any(m.get("role") == "tool" for m in messages[last_user + 1:]):
        return None
    names = set(offered)
    calls = []
    for line in str(messages[last_user].get("content") or "").splitlines():
        found = _TOOL_LINE.match(line)
        if found is None:
            continue
        name = found.group(1)
        model_name = name.replace(":", "_")
        calls.append({"id": f"call_{len(messages)}_{len(calls)}",
                      "name": model_name if model_name in names else name,
                      "arguments": found.group(2) or "{}"})
    return calls or None


def quote_tool_results(messages: list[dict]) -> str | None:
    """After the tool results of the last user message: text quoting each of them."""
    last_user = max((i for i, m in enumerate(messages) if m.get("role") == "user"), default=-1)
    names = {call.get("id"): (call.get("function") or {}).get("name")
             for m in messages[last_user + 1:] for call in (m.get("tool_calls") or ())}
    results = [f"{names.get(m.get('tool_call_id')) or 'a tool'} answered "
               f"{_clip(str(m.get('content') or ''), 2000)}"
               for m in messages[last_user + 1:] if m.get("role") == "tool"]
    if not results:
        return None
    return "I used my tools. " + "; ".join(results) + "."


def key_words(text: str, limit: int = 3, avoid: str = "") -> list[str]:
    """The text's most telling words, best first.

    The text's own words before those its quoted offline sentences were about (stock phrases
    count for nothing), words that are not in `avoid` (the system prompt) before those that
    are; then the most frequent, the longest, the first used.
    """
    own, echoed = _own_and_echoed(text)
    avoided = {w.lower() for w in _WORD.findall(avoid)}
    rank: dict[str, list] = {}  # lowered word -> [tier, -count, -length, order, as written]
    for tier, part in ((0, own), (2, echoed)):
        for word in _WORD.findall(part):
            lowered = word.lower()
            if lowered in _STOPWORDS:
                continue
            if lowered not in rank:
                rank[lowered] = [tier + (lowered in avoided), 0, -len(lowered), len(rank), word]
            rank[lowered][1] -= 1
    return [rank[w][4] for w in sorted(rank, key=lambda w: rank[w][:4])[:limit]]


def _own_and_echoed(text: str) -> tuple[str, str]:
    """(what the text's author wrote, the words its quoted offline sentences were about)."""
    for stock in (_HISTORY, _ECHO, _NOTE):  # quotes first: they may hold a clipped note
        text = stock.sub(" ", text)
    echoed: list[str] = []

    def keep_the_words(match: re.Match) -> str:
        echoed.extend(slot for slot in match.groups() if slot not in _FILLERS)
        return " "
    for template in _TEMPLATES:
        text = template.sub(keep_the_words, text)
    return text, " ".join(echoed)


def chunks_of(text: str) -> list[str]:
    """Streaming pieces whose concatenation is exactly `text`."""
    pieces = re.findall(r"\S+\s*|\s+", text)
    return ["".join(pieces[i:i + WORDS_PER_CHUNK]) for i in range(0, len(pieces), WORDS_PER_CHUNK)]


def count_tokens(text: str) -> int:
    """A deterministic stand-in for a tokenizer: about four characters per token."""
    return max(1, (len(text) + 3) // 4) if text else 0


def usage_of(messages: list[dict], text: str) -> dict:
    prompt = sum(count_tokens(str(m.get("content") or "")) for m in messages)
    completion = count_tokens(text)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def build_provider():
    """The litellm custom provider; called from the thread that imports litellm."""
    import litellm
    from litellm import CustomLLM
    from litellm.types.utils import ModelResponse

    class OfflineModel(CustomLLM):
        def completion(self, model, messages, *args, **kwargs):
            calls = tool_calls_for(messages, _offered(kwargs))
            return _response(model, messages, calls=calls)

        async def acompletion(self, model, messages, *args, **kwargs):
            calls = tool_calls_for(messages, _offered(kwargs))
            text = "" if calls else await answer_without_blocking(messages)
            return _response(model, messages, text, calls)

        def streaming(self, model, messages, *args, **kwargs):
            yield from _stream(messages, calls=tool_calls_for(messages, _offered(kwargs)))

        async def astreaming(self, model, messages, *args, **kwargs):
            calls = tool_calls_for(messages, _offered(kwargs))
            text = "" if calls else await answer_without_blocking(messages)
            for chunk in _stream(messages, text, calls):
                yield chunk

    def _response(model: str, messages: list[dict], text: str | None = None,
                  calls: list[dict] | None = None):
        if calls:
            message = {"role": "assistant", "content": None,
                       "tool_calls": [_openai_call(call) for call in calls]}
            return ModelResponse(model=model, choices=[{"message": message, "index": 0,
                                                        "finish_reason": "tool_calls"}],
                                 usage=litellm.Usage(**usage_of(messages, "")))
        text = answer(messages) if text is None else text
        return ModelResponse(model=model, choices=[{"message": {"role": "assistant",
                                                                "content": text},
                                                    "finish_reason": "stop", "index": 0}],
                             usage=litellm.Usage(**usage_of(messages, text)))

    def _stream(messages: list[dict], text: str | None = None, calls: list[dict] | None = None):
        if calls:
            last = len(calls) - 1
            for index, call in enumerate(calls):
                yield {"text": "", "is_finished": index == last, "index": 0,
                       "finish_reason": "tool_calls" if index == last else "",
                       "usage": usage_of(messages, "") if index == last else None,
                       "tool_use": {**_openai_call(call), "index": index}}
            return
        text = answer(messages) if text is None else text
        pieces = chunks_of(text) or [""]
        last = len(pieces) - 1
        for index, piece in enumerate(pieces):
            yield {"text": piece, "is_finished": index == last,
                   "finish_reason": "stop" if index == last else "", "index": 0,
                   "usage": usage_of(messages, text) if index == last else None,
                   "tool_use": None}

    return OfflineModel()


def runs(model: str) -> bool:
    """Whether `model` (a litellm name, aliases resolved) is this offline model."""
    return model.startswith(f"{PROVIDER}/")


def offered_names(tools) -> list[str]:
    """The names of the tools offered, in OpenAI's format."""
    return [(tool.get("function") or {}).get("name") for tool in tools or ()]


def _offered(kwargs: dict) -> list[str]:
    return offered_names((kwargs.get("optional_params") or {}).get("tools"))


def _openai_call(call: dict) -> dict:
    return {"id": call["id"], "type": "function",
            "function": {"name": call["name"], "arguments": call["arguments"]}}


def answer(messages: list[dict]) -> str:
    """The text answer: the tool results quoted when they are in, else `reply_to`."""
    return quote_tool_results(messages) or reply_to(messages)


async def answer_without_blocking(messages: list[dict]) -> str:
    """`answer(messages)`, in a worker thread when the conversation is long."""
    if sum(len(str(m.get("content") or "")) for m in messages) <= ON_THE_LOOP_UP_TO_CHARS:
        return answer(messages)
    return await asyncio.to_thread(answer, messages)


def _stable_number(messages: list[dict]) -> int:
    digest = hashlib.sha256(repr([(m.get("role"), m.get("content")) for m in messages])
                            .encode()).digest()
    return int.from_bytes(digest[:4], "big")


def _quote(text: str, limit: int) -> str:
    """`text` clipped, without the character that would end the quote it is put in, so that a
    reply quoted back to the model can be taken apart again."""
    return _clip(text, limit).replace('"', "'")


def _clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"
