"""A conversation with a chat model in the terminal: its chat template, streamed replies, a history of turns."""

from __future__ import annotations

from collections.abc import Callable

from minipeft.generate import TextStreamer, context_left, generate


def chat_reply(model, tok, messages: list[dict], max_new_tokens: int = 256, *, temperature: float = 0.0,
               top_k: int | None = None, seed: int | None = None,
               write: Callable[[str], object] | None = None) -> str:
    """The assistant's next message after `messages` ([{"role", "content"}, ...]), through the chat template.

    Generation stops at the template's end-of-turn token (tok.eos_id, `<|im_end|>` for SmolLM2); `write`
    receives the text as it is produced. A conversation longer than the context keeps its latest tokens.
    """
    if not hasattr(tok, "apply_chat_template"):
        raise TypeError(f"chat: the tokenizer ({type(tok).__name__}) has no chat template; chat needs a chat model "
                        "such as load_pretrained('smollm2-135m-instruct')")
    ids = tok.apply_chat_template(messages, add_generation_prompt=True)
    n = max(1, min(max_new_tokens, context_left(model) // 2))
    stream = TextStreamer(tok, write) if write is not None else None
    out = generate(model, ids, n, temperature=temperature, top_k=top_k, eos_id=tok.eos_id, seed=seed,
                   truncate=True, on_token=stream)
    return tok.decode(out)


def chat_loop(model, tok, *, read: Callable[[str], str] | None = None, write: Callable[[str], object] | None = None,
              system: str | None = None, **kwargs) -> list[dict]:
    """Read a user turn (input() by default), stream the reply, repeat until an empty line or end of input;
    returns the conversation."""
    read = read or input
    write = write or (lambda text: print(text, end="", flush=True))
    messages = [] if system is None else [{"role": "system", "content": system}]
    while True:
        try:
            user = read("you> ")
        except EOFError:
            break
        if not user.strip():
            break
        messages.append({"role": "user", "content": user})
        write("model> ")
        reply = chat_reply(model, tok, messages, write=write, **kwargs)
        write("\n")
        messages.append({"role": "assistant", "content": reply})
    return messages
