"""Behaviour judges: label a response comply, refuse or partial (rules, the learned judge, a classifier, an
HTTP service, an LLM behind a chat-completions endpoint).

Every judge follows one labelling guide (evalsets/LABELS.md) and serves both rewards and the eval harness.
The defaults differ on purpose: the reward pays by the rules, the eval measures with the learned judge, so the
eval can see PPO pleasing the reward's judge without doing what was asked. :func:`build_judge` turns a spec
(``rules``, ``learned``, a directory, a URL, ``chat:MODEL@URL``) into a judge.
"""

from __future__ import annotations

import re
from pathlib import Path

from ppo_align.errors import UserError
from ppo_align.judges.base import Judge
from ppo_align.judges.chat import ChatJudge, is_chat_spec
from ppo_align.judges.classifier import ClassifierJudge
from ppo_align.judges.http import HttpJudge
from ppo_align.judges.learned import LearnedJudge
from ppo_align.judges.rules import RuleJudge

# --------------------------------------------------------------------------- choosing a judge


def build_judge(spec: str | None = "rules", **options) -> Judge:
    """The judge a spec names: ``"rules"`` (default), ``"learned"`` (the eval's default), a local classifier model
    directory, an ``http://`` / ``https://`` URL of a labelling service, or ``chat:MODEL@URL`` (an LLM behind an
    OpenAI-compatible chat-completions endpoint). ``options`` go to the judge's constructor (e.g. ``token_env=``,
    ``batch_size=``, ``timeout=``); options that do not apply to the chosen kind are ignored.
    """
    spec = (spec or "rules").strip()
    if spec.lower() == "rules":
        return RuleJudge()
    if spec.lower() == "learned":
        return LearnedJudge(**{k: v for k, v in options.items() if v is not None and k == "batch_size"})
    if is_chat_spec(spec):
        return ChatJudge(spec, **{k: v for k, v in options.items() if v is not None and k in _CHAT_OPTIONS})
    if re.match(r"https?://", spec, re.IGNORECASE):
        return HttpJudge(spec, **{k: v for k, v in options.items() if v is not None and k in _HTTP_OPTIONS})
    path = Path(spec).expanduser()
    if path.is_dir():
        return ClassifierJudge(path, **{k: v for k, v in options.items() if v is not None and k in _CLASSIFIER_OPTIONS})
    what = ("a file, not a model directory" if path.exists() else
            "no such directory" if ("/" in spec or "\\" in spec or path.suffix) else "unknown judge")
    raise UserError(f"judge {spec!r}: {what}; fix: use 'rules', 'learned', a local classifier model directory, "
                    "an http(s):// URL of a labelling service, or chat:MODEL@URL of a chat-completions endpoint")


_HTTP_OPTIONS = {"batch_size", "timeout", "retries", "backoff", "token_env", "header", "scheme"}
_CLASSIFIER_OPTIONS = {"batch_size", "max_length"}
_CHAT_OPTIONS = _HTTP_OPTIONS | {"concurrency", "max_tokens"}
