"""``ipgate watermark``: watermark text for a client (stdin -> stdout), in bulk, or export the recipients.

    ipgate watermark --client ID [--scheme lexical] [--strength normal|strong] < in.txt > out.txt
    ipgate watermark --jsonl in.jsonl > out.jsonl        # {"id", "text", "client"} -> {"id", "text"}
    ipgate watermark --export-recipients FILE --config gateway.yaml   # one client id per line

Exit codes: 0 done, 2 error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gateway.cli.wm_common import (
    MAX_TEXT_BYTES,
    CliError,
    Progress,
    add_key_args,
    json_line,
    key_ring,
    lexical_markdown,
    load_gateway_config,
    output_closed,
    read_jsonl,
    read_text,
    recorded_recipients,
    write_out,
)
from watermark.lexical import STRENGTH_LEVEL, LexicalScheme
from watermark.verify import client_line, utf8_encodable


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "watermark", help="watermark text for a client (stdin to stdout), or export recorded recipients")
    p.add_argument("--client", help="the client whose key marks the text")
    p.add_argument("--scheme", choices=["lexical", "kgw"], default="lexical",
                   help="only lexical can be applied to finished text; kgw works in the model's sampler")
    p.add_argument("--strength", choices=sorted(STRENGTH_LEVEL), default="normal",
                   help="strong: also the groups the gateway marks at tiers with watermark_strength: strong")
    p.add_argument("--no-markdown", action="store_true",
                   help="leave markdown list markers alone (default: the config's watermark.lexical_markdown, "
                   "else they are choice points)")
    p.add_argument("--jsonl", help='bulk: a JSONL file of {"id", "text", "client"}; writes {"id", "text"}')
    p.add_argument("--export-recipients", metavar="FILE",
                   help="write the client ids the gateway recorded (needs --config) to FILE, one per line")
    add_key_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        cfg = load_gateway_config(args)
        if args.export_recipients:
            recorded = recorded_recipients(cfg, "--export-recipients needs --config (the gateway's store)")
            text = "".join(f"{client_line(c)}\n" for c in sorted(recorded))
            try:
                Path(args.export_recipients).write_text(text, encoding="utf-8")
            except OSError as e:
                raise CliError(f"--export-recipients {args.export_recipients}: {e.strerror}") from e
            print(f"wrote {len(recorded)} recipients to {args.export_recipients}", file=sys.stderr)
            return 0
        if args.scheme == "kgw":
            raise CliError("kgw is embedded while the model samples (vllm_xargs); finished text can only be "
                           "watermarked with --scheme lexical")
        ring = key_ring(args, cfg)
        markdown = lexical_markdown(args, cfg)
        scheme = LexicalScheme(ring.master, markdown=markdown)
        if args.jsonl:
            rows = read_jsonl(args.jsonl, ("text", "client"))
            progress = Progress(len(rows), "watermark")
            for row in rows:
                out = scheme.embed(row["text"], ring.key(row["client"]), args.strength)
                write_out(json_line({"id": row.get("id"), "text": out}) + "\n")
                progress.step()
            progress.close()
            sys.stdout.flush()
            return 0
        if not args.client or not utf8_encodable(args.client):
            raise CliError("--client is required: a non-empty client id (or --jsonl / --export-recipients)")
        write_out(scheme.embed(read_text("-", limit=MAX_TEXT_BYTES), ring.key(args.client), args.strength))
        sys.stdout.flush()
        return 0
    except CliError as e:
        print(f"ipgate watermark: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return output_closed("ipgate watermark")
