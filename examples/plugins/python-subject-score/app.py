"""subject-score: a Postern content filter written in Python.

It reads the Subject header and the first part of the body through the
host's `message` resource (in chunks, never the whole message at once),
scores configured words, and adds a header naming what it found. Words
listed in `reject` refuse the message outright.

Config (TOML, in the host's chain entry):

    [[chain.data]]
    plugin = "subject-score"
    config.words = { viagra = 5.0, lottery = 3.0 }
    config.reject = ["eicar-test-word"]
    config.scan_bytes = 65536
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import host, types

CHUNK = 16 * 1024


def _config():
    cfg = json.loads(host.config() or "{}")
    words = {str(k).lower(): float(v) for k, v in cfg.get("words", {}).items()}
    reject = [str(w).lower() for w in cfg.get("reject", [])]
    scan = int(cfg.get("scan_bytes", 64 * 1024))
    unknown = set(cfg) - {"words", "reject", "scan_bytes"}
    if unknown:
        raise ValueError(f"unknown config keys: {', '.join(sorted(unknown))}")
    return words, reject, scan


def _text(message, scan_bytes):
    """Subject plus the first `scan_bytes` of the body, lower-cased."""
    parts = [" ".join(message.header("Subject"))]
    offset = 0
    while offset < scan_bytes:
        chunk = message.read_body(offset, min(CHUNK, scan_bytes - offset))
        if not chunk:
            break
        parts.append(chunk.decode("utf-8", errors="replace"))
        offset += len(chunk)
    return "\n".join(parts).lower()


class DataHook(exports.DataHook):
    def on_data(self, session, envelope, message):
        words, reject, scan = _config()
        text = _text(message, scan)
        for w in reject:
            if w in text:
                host.log(host.Level.INFO, f"rejecting: found {w!r}")
                return types.Outcome(
                    verdict=types.Verdict_Reject(
                        types.Reply(code=554, enhanced="5.7.1", text=f"Message content rejected ({w})")
                    ),
                    scores=[],
                    actions=[],
                )
        found = sorted(w for w in words if w in text)
        scores = [
            types.Score(symbol="WORD_" + w.upper().replace(" ", "_"), points=words[w], detail=None)
            for w in found
        ]
        actions = []
        if found:
            actions.append(types.Action_AddHeader(types.Header(name="X-Spam-Words", value=", ".join(found))))
            host.log(host.Level.DEBUG, f"found {found} from {session.client_ip()}")
        return types.Outcome(verdict=types.Verdict_Continue(), scores=scores, actions=actions)


class Configure(exports.Configure):
    def check_config(self):
        try:
            _config()
        except (ValueError, TypeError, AttributeError, json.JSONDecodeError) as e:
            raise Err(f"subject-score: {e}")
