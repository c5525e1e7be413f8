"""Lesson 04 (quantisation from scratch): NF4 quantise and dequantise, bits per parameter; quizzes.
(The memory estimate moved to lesson 05 with the memory arithmetic: lesson05.py.)"""

from __future__ import annotations

import random

import torch

from labkit import memory, quant
from labkit.check import Case, exercise, number, question, randn, sequence, tensor

LESSON = "04"


# ---------------------------------------------------------------------------------------------
# nf4_quantize(w, blocksize) -> (codes, absmax)


def _weight(rng_or_seed, shape, zero_block=False, blocksize=64):
    rng = rng_or_seed if isinstance(rng_or_seed, random.Random) else random.Random(rng_or_seed)
    w = randn(rng, *shape, scale=0.05)
    if zero_block:
        w.view(-1)[blocksize: 2 * blocksize] = 0.0
    return w


def _nf4_codes(tie_tol: float = 1e-6):
    """Codes must equal the reference's, except for a value that lies on the midpoint between two
    NF4 values (within float rounding): either neighbour is then right."""
    exact = tensor(integer=True)
    midpoints = (quant.NF4_CODE[:-1] + quant.NF4_CODE[1:]) / 2

    def compare(got, exp, case):
        problem = exact(got, exp, case)
        if problem is None or not isinstance(got, torch.Tensor) or got.shape != exp.shape \
                or got.is_floating_point() or got.dtype == torch.bool:
            return problem
        g, e = got.long().cpu(), exp.long()
        if g.min() < 0 or g.max() > 15:
            return "codes must be indices 0..15 into NF4_CODE"
        w, blocksize = case.inputs["w"], case.inputs["blocksize"]
        flat = w.reshape(-1).float()
        absmax = quant.quantize_blockwise(flat, quant.NF4_CODE, blocksize)[1]
        scaled = flat / absmax.clamp(min=1e-38).repeat_interleave(blocksize)[: flat.numel()]
        wrong = g != e
        lo = torch.minimum(g, e).clamp(max=14)
        on_midpoint = ((g - e).abs() == 1) & ((scaled - midpoints[lo]).abs() <= tie_tol)
        if (wrong & ~on_midpoint).any():
            return problem
        return None

    return compare


_QUANT_HINT = ("per block of `blocksize` consecutive values (row-major): absmax = max |w|, then the index of "
               "the NF4_CODE value nearest to w / absmax")

exercise(id="nf4_quantize", lesson=LESSON, title="NF4: blockwise absmax quantisation",
         signature="nf4_quantize(w, blocksize)",
         reference=quant.quantize_nf4,
         public=lambda: [Case({"w": _weight(1, (4, 64)), "blocksize": 64}, "4 rows of one block each"),
                         Case({"w": _weight(2, (8, 96)), "blocksize": 64}, "rows that are not whole blocks",
                              hint="flatten w first (w.reshape(-1)): blocks run across row boundaries"),
                         Case({"w": _weight(3, (6, 32)), "blocksize": 32}, "blocksize 32")],
         hidden=lambda rng: [
             Case({"w": _weight(rng, (rng.randint(1, 9), rng.choice([32, 64, 128]))), "blocksize": rng.choice([32, 64])}),
             Case({"w": _weight(rng, (rng.randint(2, 7), rng.randint(5, 90))), "blocksize": 64},
                  "a partial last block", hint="the last block may be shorter than blocksize; it gets its own absmax"),
             Case({"w": _weight(rng, (4, 64), zero_block=True), "blocksize": 64}, "an all-zero block",
                  hint="a block of zeros has absmax 0: dividing by it gives NaN; map those values to the code of 0.0"),
             Case({"w": _weight(rng, (rng.randint(1, 5), 128)), "blocksize": 128})],
         compare=sequence(codes=_nf4_codes(), absmax=tensor(rtol=1e-6, atol=0)),
         hint=_QUANT_HINT)


# ---------------------------------------------------------------------------------------------
# nf4_dequantize(codes, absmax, shape, blocksize) -> w_hat


def _quantised(rng_or_seed, shape, blocksize):
    w = _weight(rng_or_seed, shape)
    codes, absmax = quant.quantize_nf4(w, blocksize)
    return {"codes": codes, "absmax": absmax, "shape": tuple(shape), "blocksize": blocksize}


_UINT8_HINT = ("codes are uint8, and indexing with a uint8 tensor means a boolean mask in torch: "
               "use NF4_CODE[codes.long()]")

exercise(id="nf4_dequantize", lesson=LESSON, title="NF4: back to float",
         signature="nf4_dequantize(codes, absmax, shape, blocksize)",
         reference=quant.dequantize_nf4,
         public=lambda: [Case(_quantised(1, (4, 64), 64), "4 rows of one block each", hint=_UINT8_HINT),
                         Case(_quantised(2, (3, 96), 64), "rows that are not whole blocks",
                              hint="blocks run over the flattened weight; reshape to `shape` at the end")],
         hidden=lambda rng: [Case(_quantised(rng, (rng.randint(1, 8), rng.randint(3, 130)), rng.choice([32, 64, 128])))
                             for _ in range(4)],
         compare=tensor(rtol=1e-6, atol=1e-8),
         hint="NF4_CODE[codes] times the absmax of each value's block, reshaped to `shape`")


# ---------------------------------------------------------------------------------------------
# bits_per_parameter(blocksize, double_quant, blocksize2)

exercise(id="nf4_bits_per_parameter", lesson=LESSON, title="Bits per parameter of an NF4 weight",
         signature="bits_per_parameter(blocksize, double_quant, blocksize2)",
         reference=memory.bits_per_parameter,
         public=lambda: [Case({"blocksize": 64, "double_quant": False, "blocksize2": 256}, "one fp32 absmax per block"),
                         Case({"blocksize": 64, "double_quant": True, "blocksize2": 256}, "double quantisation",
                              hint="with double quantisation: an 8-bit absmax per block, plus one fp32 constant "
                                   "per blocksize2 blocks")],
         hidden=lambda rng: [Case({"blocksize": rng.choice(quant.NF4_BLOCKSIZES[:6]), "double_quant": rng.random() < 0.6,
                                   "blocksize2": rng.choice(quant.DYNAMIC_BLOCKSIZES[:5])}) for _ in range(5)],
         compare=number(rtol=1e-9),
         hint="4 bits per code plus each weight's share of the constants: a 32-bit absmax is shared by blocksize weights")


# ---------------------------------------------------------------------------------------------
# Quizzes

question(id="q04_bits_b128", lesson=LESSON, kind="number", rtol=1e-3, answer_hash="f34d033d7fd072e94c20d88b",
         text="NF4 with blocksize 128 and double quantisation (8-bit absmax, one fp32 constant per 256 blocks): "
              "how many bits per parameter? (to 3 decimals)",
         hint="4 + 8 / blocksize + 32 / (blocksize · 256)")

question(id="q04_exact_zero", lesson=LESSON, kind="choice", answer_hash="e1cae057c83d872707536cab",
         text="NF4 has 7 negative values, an exact 0 and 8 positive values. Why not 8 and 8?",
         choices=("negative weights are rarer than positive ones in most trained networks",
                  "one code is kept free to mark the end of each block of 64 weights",
                  "a symmetric grid of 16 has no exact 0, and 0 must be stored exactly"),
         feedback={"a": "Trained weights are close to symmetric around 0 (see section 4's histogram); the "
                        "asymmetry is not about which sign is more common.",
                   "b": "NF4 has no marker code: all 16 codes are values, and each block's absmax is stored "
                        "apart from the codes."})

question(id="q04_why_blocks", lesson=LESSON, kind="choice", answer_hash="af38f491ec5fbe80f6943c29",
         text="Why does NF4 keep one absmax per block of 64 weights rather than one per weight matrix?",
         choices=("a large weight then coarsens only its own block, not the whole matrix",
                  "dequantising one block at a time is faster than dequantising a whole matrix",
                  "bitsandbytes cannot quantise a matrix holding more than 4,096 values"),
         feedback={"b": "Dequantising is one multiply per weight either way; more blocks means more scales "
                        "to store and read, not less work.",
                   "c": "bitsandbytes quantises matrices of any size; the blocksize is how many weights share "
                        "one scale, not a limit on the matrix."})
