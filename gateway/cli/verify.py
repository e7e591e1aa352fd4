"""``ipgate verify``: is this text watermarked, and which client received it?

    ipgate verify [FILE|-] [--client ID | --clients FILE] [--scheme auto|lexical|kgw] [--tokenizer PATH]
                  [--fpr 1e-6] [--json] [--jsonl FILE [--corpus]] [--secret-file F] [--config gateway.yaml]
                  [--no-markdown]

Exit codes: 0 watermarked (any text, in bulk mode), 1 not watermarked, 2 error. Without ``--client`` or
``--clients`` the candidates are the recipients recorded by the gateway (``--config``).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from typing import TYPE_CHECKING, Any

from gateway.cli.wm_common import (
    MAX_TEXT_BYTES,
    CliError,
    Progress,
    add_key_args,
    key_ring,
    lexical_markdown,
    load_gateway_config,
    output_closed,
    read_jsonl,
    read_lines,
    read_text,
    recorded_recipients,
    write_out,
)
from watermark.base import Scheme
from watermark.keys import ClientKey, KeyRing
from watermark.verify import SCHEMES, Verdict, candidate_keys, utf8_encodable, verify

if TYPE_CHECKING:  # imported lazily, as in wm_common
    from gateway.config import GatewayConfig
    from watermark.kgw.params import KgwParams


def register(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser(
        "verify", help="detect a watermark and attribute text to a client",
        description="Exit 0 when watermarked, 1 when not, 2 on error.")
    p.add_argument("file", nargs="?", default="-", help="text file to check (default: stdin)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--client", help="test only this client id")
    who.add_argument("--clients", help="file with one candidate client id per line")
    p.add_argument("--scheme", choices=SCHEMES, default="auto",
                   help="auto (default): lexical, and kgw too when a tokenizer is given or configured")
    p.add_argument("--tokenizer", help="tokenizer.json of the model (needed for kgw; default: the config's "
                   "watermark.kgw_tokenizer_file, as the admin API uses it)")
    p.add_argument("--kgw-params", metavar="SPEC",
                   help="kgw green-list spec, e.g. g0.25-h4-selfhash (default: the config's watermark.kgw_params, "
                        "else g0.25-h4-selfhash)")
    p.add_argument("--fpr", type=float, default=1e-6, help="family-wise false-positive rate (default 1e-6)")
    p.add_argument("--json", action="store_true",
                   help='print one JSON object ({"watermarked": null, "error"} on an error)')
    p.add_argument("--jsonl", help='bulk: a JSONL file of {"id", "text"}; one verdict per line on stdout')
    p.add_argument("--corpus", action="store_true", help="with --jsonl: pool all texts into one verdict")
    p.add_argument("--top", type=int, default=5,
                   help="candidates to list in the JSON output, one per client and key version (default 5)")
    p.add_argument("--no-markdown", action="store_true",
                   help="do not score markdown list markers (default: the config's watermark.lexical_markdown, "
                   "else they are scored)")
    add_key_args(p)
    p.set_defaults(func=run)


def _schemes(args: argparse.Namespace, ring: KeyRing, cfg: GatewayConfig | None) -> list[Scheme]:
    out: list[Scheme] = []
    if args.scheme in ("auto", "lexical"):
        # score list markers only where the gateway chose them: elsewhere they would be coin flips (power)
        from watermark.lexical import LexicalScheme  # here: ≈ 30 ms of start-up that `--scheme kgw` skips

        markdown = lexical_markdown(args, cfg)
        out.append(LexicalScheme(ring.master, markdown=markdown))
    # without --tokenizer, the config's watermark.kgw_tokenizer_file, as the admin API verifies: the same text
    # and config must not be "watermarked" there and "not watermarked" here
    tokenizer, what = args.tokenizer, "--tokenizer"
    if tokenizer is None and cfg is not None and cfg.watermark.kgw_tokenizer_file:
        tokenizer, what = cfg.watermark.kgw_tokenizer_file, "watermark.kgw_tokenizer_file"
    if args.scheme == "kgw" or (args.scheme == "auto" and tokenizer):
        if not tokenizer:
            raise CliError("--scheme kgw needs --tokenizer PATH (the model's tokenizer.json), or --config with "
                           "watermark.kgw_tokenizer_file")
        # an error, never a silent lexical-only verdict; with --scheme auto, say how to verify without KGW
        hint = "; --scheme lexical verifies without it" if args.scheme == "auto" else ""
        try:
            from watermark.kgw.detect import KgwScheme
        except ImportError as e:  # the tokenizers library is an optional dependency
            raise CliError(f"--scheme kgw needs the 'tokenizers' package ({e}): pip install 'ipgate[torch]' "
                           f"(or just tokenizers){hint}") from e
        params = _kgw_params(args, cfg)
        try:
            out.append(KgwScheme.from_tokenizer_file(tokenizer, params))
        except ImportError as e:  # imported when the file is read
            raise CliError(f"--scheme kgw needs the 'tokenizers' package ({e}): pip install 'ipgate[torch]' "
                           f"(or just tokenizers){hint}") from e
        except Exception as e:  # tokenizers raises its own exception types for unreadable files
            raise CliError(f"{what} {tokenizer}: {e}{hint}") from e
    return out


def _kgw_params(args: argparse.Namespace, cfg: GatewayConfig | None) -> KgwParams:
    from watermark.kgw.directives import parse_spec

    if args.kgw_params is None:
        return cfg.watermark.kgw() if cfg is not None else parse_spec("g0.25-h4-selfhash")
    try:
        return parse_spec(args.kgw_params)
    except ValueError as e:
        raise CliError(f"--kgw-params: {str(e).removeprefix('ipgate_kgw_spec: ')}") from None


def _keys(args: argparse.Namespace, ring: KeyRing, cfg: Any) -> list[ClientKey]:
    if args.client is not None:
        if not args.client.strip() or not utf8_encodable(args.client):
            raise CliError(f"--client: not a usable client id: {args.client!r}")
        return candidate_keys(ring, [args.client])
    if args.clients:
        clients = read_lines(args.clients, "--clients")
        if not clients:
            raise CliError(f"--clients {args.clients}: no client ids")
        return candidate_keys(ring, clients)
    recorded = recorded_recipients(cfg)
    if not recorded:
        raise CliError("the gateway has recorded no watermark recipients yet; pass --client or --clients")
    return candidate_keys(ring, sorted(recorded), recorded)


def _print(v: Verdict, args: argparse.Namespace, corpus: bool = False) -> None:
    if args.json:
        write_out(json.dumps(v.to_json(corpus)) + "\n")
        return
    where = f"{v.texts} texts, " if corpus else ""
    if v.watermarked:
        write_out(f"WATERMARKED: client {v.client} (key v{v.key_version}), p = {v.p_value:.3g} "
                  f"(log10 {v.log10_p_value:.1f}), scheme {v.scheme}, {where}{v.scored} choices scored\n")
    else:
        best = f"best candidate {v.client}, " if v.client else ""
        write_out(f"not watermarked at FPR {args.fpr:g}: {best}p = {v.p_value:.3g}, scheme {v.scheme}, "
                  f"{where}{v.scored} choices scored\n")


def run(args: argparse.Namespace) -> int:
    try:
        if not 0.0 < args.fpr < 1.0:
            raise CliError(f"--fpr must be in (0, 1), got {args.fpr}")
        if args.corpus and not args.jsonl:
            raise CliError("--corpus needs --jsonl FILE")
        if args.clients == "-" and (args.jsonl or args.file) == "-":  # --jsonl - reads stdin too
            raise CliError("--clients - and the text cannot both come from stdin; pass FILE or a clients file")
        if args.top < 1:
            raise CliError(f"--top must be at least 1, got {args.top}")
        cfg = load_gateway_config(args)
        ring = key_ring(args, cfg)
        schemes = _schemes(args, ring, cfg)
        # 100 000 candidates allocate 100 000 key tuples at once, and the cyclic collector would walk the
        # growing list again and again (≈ 20 % of the derivation); nothing here creates reference cycles.
        collecting = gc.isenabled()  # an embedding caller may have switched it off: leave it as found
        gc.disable()
        try:
            keys = _keys(args, ring, cfg)
        finally:
            if collecting:
                gc.enable()
        if not args.jsonl:
            text = read_text(args.file, limit=MAX_TEXT_BYTES)
            if not text.strip():  # `curl ... | ipgate verify -` after a failed download: an error, not a verdict
                where = "stdin" if args.file == "-" else args.file
                raise CliError(f"{where}: no text to verify (the input is empty or only whitespace)")
            v = verify(text, keys, schemes, fpr=args.fpr, top=args.top)
            _print(v, args)
            return 0 if v.watermarked else 1
        rows = read_jsonl(args.jsonl, ("text",))
        if not rows:  # exit 1 would say "not watermarked" about texts that were never there
            raise CliError(f"--jsonl {args.jsonl}: no texts (the file is empty or holds only blank lines)")
        if args.corpus:
            v = verify([r["text"] for r in rows], keys, schemes, fpr=args.fpr, top=args.top)
            _print(v, args, corpus=True)
            return 0 if v.watermarked else 1
        any_marked = False
        progress = Progress(len(rows), "verify")
        for row in rows:
            v = verify(row["text"], keys, schemes, fpr=args.fpr, top=args.top)
            any_marked |= v.watermarked
            write_out(json.dumps({"id": row.get("id"), **v.to_json()}) + "\n")
            progress.step()
        progress.close()
        sys.stdout.flush()
        return 0 if any_marked else 1
    except CliError as e:
        print(f"ipgate verify: {e}", file=sys.stderr)
        if args.json:  # stdout stays one object (a script reads .watermarked): null, never a verdict
            write_out(json.dumps({"watermarked": None, "error": str(e)}) + "\n")
        return 2
    except BrokenPipeError:
        return output_closed("ipgate verify")
