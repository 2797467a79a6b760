"""``dalle tokenizer train | encode``: learn the caption BPE and inspect how it splits text."""

from __future__ import annotations

import argparse
from pathlib import Path

from dalle.cli.common import non_negative_int, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tokenizer",
        help="train or try the caption tokenizer",
        description="Train the byte-level BPE caption tokenizer, or show how it encodes text.",
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True, parser_class=type(p))

    t = actions.add_parser(
        "train",
        help="learn a BPE vocabulary from captions",
        description="Learn a byte-level BPE vocabulary from captions (normalised: NFKC, "
        "lower case, single spaces) and write it as one JSON file. Any text still encodes "
        "afterwards: characters never seen in training fall back to byte tokens.",
    )
    t.add_argument(
        "--data",
        required=True,
        metavar="shapes|DIR",
        help="'shapes' for captions of the built-in dataset's train split, or a folder "
        "whose .txt files (searched recursively) hold one caption per line "
        "(write ./shapes for a folder of that name)",
    )
    t.add_argument(
        "--vocab-size",
        type=positive_int,
        help="largest vocabulary, [PAD] and the 256 byte tokens included (>= 257; small "
        "corpora may stop short of it) (default: TokenizerConfig's, 1 024)",
    )
    t.add_argument("--out", type=Path, required=True, help="tokenizer JSON file to write")
    t.add_argument(
        "--num",
        type=positive_int,
        default=20_000,
        help="number of shapes samples to read, with --data shapes (default: %(default)s)",
    )
    t.add_argument(
        "--seed",
        type=non_negative_int,
        default=0,
        help="shapes dataset seed, with --data shapes (default: %(default)s)",
    )
    t.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    t.set_defaults(func=run_train)

    e = actions.add_parser(
        "encode",
        help="print the token ids of captions",
        description="Print, for each TEXT, its token ids (padding left out) and the tokens.",
    )
    e.add_argument("--tokenizer", type=Path, required=True, help="tokenizer JSON file")
    e.add_argument(
        "--text-len",
        type=positive_int,
        default=None,
        help="truncate to this many tokens, as training does (default: no limit)",
    )
    e.add_argument("texts", nargs="+", metavar="TEXT", help="caption(s) to encode")
    e.set_defaults(func=run_encode)


def run_train(args: argparse.Namespace) -> int:
    from dalle.data import ShapesData, open_data
    from dalle.io import check_output_file
    from dalle.tokenizer import MAX_VOCAB_SIZE, MIN_VOCAB_SIZE
    from dalle.train import TokenizerConfig, train_tokenizer

    cfg = TokenizerConfig()
    if args.vocab_size is not None:
        if not MIN_VOCAB_SIZE <= args.vocab_size <= MAX_VOCAB_SIZE:  # before reading captions
            raise ValueError(
                f"--vocab-size must be in {MIN_VOCAB_SIZE}..{MAX_VOCAB_SIZE}, got {args.vocab_size}"
            )
        cfg = TokenizerConfig(vocab_size=args.vocab_size)
    check_output_file(args.out, force=args.force)
    data = open_data(args.data, args.num, args.seed)
    captions = data.captions()
    if isinstance(data, ShapesData):
        source = f"{args.num} shapes train captions (seed {args.seed})"
    else:
        source = f"{len(captions)} captions from {args.data}"
    tokenizer = train_tokenizer(captions, cfg)
    tokenizer.save(args.out)
    lengths = [len(tokenizer.tokenize(c)) for c in captions]
    print(
        f"wrote {args.out}: vocab_size {tokenizer.vocab_size} from {source}; "
        f"caption length in tokens: max {max(lengths)}, mean {sum(lengths) / len(lengths):.1f}"
    )
    return 0


def run_encode(args: argparse.Namespace) -> int:
    from dalle.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(args.tokenizer)
    for n, text in enumerate(args.texts, 1):
        if not tokenizer.normalize(text).strip():
            raise ValueError(f"TEXT {n} is empty (expected a caption)")
        ids = tokenizer.tokenize(text)
        if args.text_len is not None:
            row, length = tokenizer.encode(text, args.text_len)
            ids = row[:length].tolist()
        pieces = [tokenizer.decode([i]) for i in ids]
        print(f"{len(ids)} tokens: {' '.join(map(str, ids))}  {pieces}")
    return 0
