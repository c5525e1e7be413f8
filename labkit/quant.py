"""QLoRA's 4-bit NormalFloat (NF4) from scratch: the codebook, blockwise quantisation, double quantisation.

The pieces, in the order of the QLoRA paper (Dettmers et al. 2023, https://arxiv.org/abs/2305.14314):

1. The NF4 codebook: 16 values at quantiles of a standard normal, scaled to [-1, 1] (`NF4_CODE`);
   FP4 and plain int4 (`FP4_CODE`, `INT4_CODE`) for comparison (`quantize_4bit`, `quantization_error`).
2. Blockwise absmax quantisation: each block of 64 weights is divided by its largest |w| and every
   value is replaced by the index of the nearest codebook value (`quantize_blockwise`, the maths;
   `quantize_nf4` / `dequantize_nf4` for a weight).
3. Double quantisation: the per-block absmax constants (fp32, 0.5 bit per weight) are themselves
   quantised to 8 bits in blocks of 256 with the same `quantize_blockwise` and bitsandbytes' dynamic
   code (`double_quantize`, `double_dequantize`): 0.127 bit per weight.

What that buys in memory (bits per parameter, full vs LoRA vs QLoRA fine-tuning) is labkit.memory.

Everything here is plain torch and reproduces bitsandbytes 0.50's reference kernels bit for bit
(tests/test_quant.py checks it), including its rounding details, which the comments point out.
"""

from __future__ import annotations

import torch

# Blocksizes bitsandbytes accepts for 4-bit (quantize_4bit) and 8-bit (quantize_blockwise) blocks.
NF4_BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)
DYNAMIC_BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)

# bitsandbytes' outermost quantile. ppf(1.0) is infinite, so the grid must stop short of 1; this
# value equals 1 - (1/30 + 1/32) / 2 (half a step of a 15- and of a 16-point grid) to 7 digits.
NF4_OFFSET = 0.9677083


# -----------------------------------------------------------------------------
# The two codebooks


def nf4_code_from_normal(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 values, derived from quantiles of N(0, 1) as bitsandbytes' create_normal_map does.

    Returns: (16,) float32, sorted, from -1.0 to 1.0, with an exact 0.0 at index 7.

    4 bits give 16 values but a symmetric grid would have no exact zero (zero-padding and
    zero-centred weights need one). So NF4 is asymmetric: 8 positive quantiles, 7 negative ones
    and a 0, each side normalised by its own largest value so that both ends are exactly +-1.
    """
    # Probabilities in float32, as bitsandbytes takes them from torch.linspace; the quantiles
    # in float64, then rounded to float32: this order reproduces its table bit for bit.
    positive = torch.special.ndtri(torch.linspace(offset, 0.5, 9)[:-1].double())  # 8 values > 0
    negative = -torch.special.ndtri(torch.linspace(offset, 0.5, 8)[:-1].double())  # 7 values < 0
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).float()
    values = values.sort().values
    return values / values.max()


def dynamic_code() -> torch.Tensor:
    """bitsandbytes' signed 8-bit dynamic code (create_dynamic_map()), used for the absmax constants.

    Returns: (256,) float32, sorted, from -0.993 to 1.0, with 0.0 at index 127.

    Dynamic tree quantisation (Dettmers 2015, https://arxiv.org/abs/1511.04561): for each decade
    10^-6 .. 10^0, 2^i values (i = 0..6) at the midpoints of a uniform grid on [0.1, 1], both signs,
    plus 0 and 1. Small magnitudes get few values, large ones many: a float with a 3-bit exponent.
    """
    values = [0.0, 1.0]
    for i in range(7):
        grid = torch.linspace(0.1, 1, 2**i + 1)
        midpoints = (grid[:-1] + grid[1:]) / 2
        values += (10 ** (i - 6) * midpoints).tolist()
        values += (-(10 ** (i - 6)) * midpoints).tolist()
    return torch.tensor(sorted(values), dtype=torch.float32)


def fp4_code() -> torch.Tensor:
    """bitsandbytes' FP4 values: a tiny float with 1 sign, 2 exponent and 1 mantissa bit.

    Returns: (16,) float32, sorted, from -1.0 to 1.0; zero appears twice (+0 and -0), so only 15
    values are distinct. The magnitudes are 0, a subnormal 0.0625 and 2^e * (1 + m/2) for
    e = 1, 2, 3 and m = 0, 1 (2, 3, 4, 6, 8, 12), divided by 12 so the largest is 1.
    A float grid is dense near 0 and coarse near +-1, like NF4, but its spacing doubles per
    exponent step instead of following a normal distribution.
    """
    magnitudes = [0.0, 0.0625] + [2.0**e * (1 + m / 2) for e in (1, 2, 3) for m in (0, 1)]
    values = torch.tensor([-v for v in magnitudes] + magnitudes, dtype=torch.float32) / 12
    return values.sort().values


def int4_code() -> torch.Tensor:
    """Plain symmetric int4: the uniform grid -7/7 .. 7/7 (as bitsandbytes' get_4bit_type("int4")).

    Returns: (16,) float32, sorted, zero twice (+0 and -0): 15 distinct, evenly spaced values.
    With an absmax scale the 16th integer level, -8, would never be used.
    """
    values = torch.arange(-7, 8, dtype=torch.float32) / 7
    return torch.cat([values[:7], torch.zeros(1), values[7:]])


NF4_CODE = nf4_code_from_normal()
FP4_CODE = fp4_code()
INT4_CODE = int4_code()
DYNAMIC_CODE = dynamic_code()
# The 4-bit codebooks quantize_4bit accepts, by name (each sorted, 16 entries).
CODES_4BIT = {"nf4": NF4_CODE, "fp4": FP4_CODE, "int4": INT4_CODE}


# -----------------------------------------------------------------------------
# Blockwise absmax quantisation, shared by the 4-bit weights and the 8-bit constants


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor,
                       blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax quantisation of X with the sorted codebook CODE (16 or 256 values in [-1, 1]).

    x: (n,) float32, cut into blocks of BLOCKSIZE values; the last block may be partial.
    Returns (codes (n,) uint8, the index of the CODE value nearest to x / absmax of its block;
    absmax (ceil(n / blocksize),) float32, the largest |x| of each block).
    """
    n = x.numel()
    full = n - n % blocksize
    blocks = x[:full].view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)
    # times the reciprocal, as bitsandbytes does (a division can differ in the last bit and move a
    # value on a midpoint to the other code); clamp: an all-zero block scales to 0, not NaN
    scaled = (blocks * (1.0 / absmax.clamp(min=1e-38))[:, None]).reshape(-1)
    if full < n:  # a partial last block has its own absmax (bitsandbytes divides there)
        tail_max = x[full:].abs().amax()
        scaled = torch.cat([scaled, x[full:] / tail_max.clamp(min=1e-38)])
        absmax = torch.cat([absmax, tail_max[None]])
    # the nearest code value = how many midpoints between neighbours lie below; a value exactly on
    # a midpoint goes to the lower code, as in bitsandbytes
    midpoints = (code[:-1] + code[1:]) / 2
    return torch.bucketize(scaled, midpoints).to(torch.uint8), absmax


def dequantize_blockwise(codes: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor,
                         blocksize: int) -> torch.Tensor:
    """The inverse of quantize_blockwise: CODE[codes] times the absmax of each value's block.

    codes: (n,) integer indices into CODE; absmax: (ceil(n / blocksize),) float32. Returns (n,) float32.
    """
    values = code[codes.reshape(-1).long()]
    return values * absmax.reshape(-1).float().repeat_interleave(blocksize)[: values.numel()]


def check_blocksize(blocksize, valid) -> None:
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize not in valid:
        raise ValueError(f"blocksize must be one of {valid} (what bitsandbytes supports), "
                         f"got {blocksize!r}.")


def _check_float(x, name: str) -> None:
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor, got "
                         f"{getattr(x, 'dtype', type(x).__name__)}.")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty: there is nothing to quantise.")


def _check_codes(codes, absmax, numel: int, blocksize: int, n_codes: int) -> None:
    if not isinstance(codes, torch.Tensor) or codes.is_floating_point() or codes.is_complex():
        raise ValueError("codes must be an integer torch.Tensor of indices (as quantize_* returns).")
    if codes.numel() != numel:
        raise ValueError(f"codes has {codes.numel()} elements but the shape needs {numel}.")
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= n_codes):
        raise ValueError(f"codes must lie in 0..{n_codes - 1}, got {int(codes.min())}..{int(codes.max())}.")
    n_blocks = -(-numel // blocksize)
    if not isinstance(absmax, torch.Tensor) or absmax.numel() != n_blocks:
        got = absmax.numel() if isinstance(absmax, torch.Tensor) else type(absmax).__name__
        raise ValueError(f"absmax must hold one value per block: {numel} elements in blocks of "
                         f"{blocksize} need {n_blocks}, got {got}.")


# -----------------------------------------------------------------------------
# NF4 (and FP4, int4): 4-bit weights


def _check_quant_type(quant_type) -> torch.Tensor:
    if quant_type not in CODES_4BIT:
        raise ValueError(f"quant_type must be one of {tuple(CODES_4BIT)}, got {quant_type!r}.")
    return CODES_4BIT[quant_type]


def quantize_4bit(w: torch.Tensor, quant_type: str = "nf4",
                  blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise absmax 4-bit quantisation with the codebook CODES_4BIT[quant_type].

    w: any shape, float32/bf16/fp16 (computed in float32), flattened row-major into blocks of
    BLOCKSIZE values; the last block may be partial. quant_type: "nf4", "fp4" or "int4".
    Returns (codes, absmax): codes (w.numel(),) uint8 indices 0..15 into the SORTED codebook (for
    "nf4" that is bitsandbytes' own numbering; its "fp4" numbering is a permutation of ours);
    absmax (ceil(w.numel() / blocksize),) float32, the largest |w| of each block.
    """
    code = _check_quant_type(quant_type)
    _check_float(w, "w")
    check_blocksize(blocksize, NF4_BLOCKSIZES)
    return quantize_blockwise(w.detach().reshape(-1).float(), code.to(w.device), blocksize)


def dequantize_4bit(codes: torch.Tensor, absmax: torch.Tensor, shape, quant_type: str = "nf4",
                    blocksize: int = 64) -> torch.Tensor:
    """The inverse of quantize_4bit: CODES_4BIT[quant_type][codes] * absmax of each block.

    codes: (prod(shape),) integer indices 0..15; absmax: (ceil(prod(shape) / blocksize),) float.
    Returns: float32 tensor of SHAPE.
    """
    code = _check_quant_type(quant_type)
    check_blocksize(blocksize, NF4_BLOCKSIZES)
    shape = torch.Size(shape)
    _check_codes(codes, absmax, shape.numel(), blocksize, n_codes=16)
    return dequantize_blockwise(codes, absmax, code.to(codes.device), blocksize).reshape(shape)


def quantize_nf4(w: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Blockwise NF4 quantisation of a weight, as bitsandbytes' quantize_4bit(quant_type="nf4").

    w: any shape, float32/bf16/fp16 (computed in float32). Flattened row-major into blocks of
    BLOCKSIZE values; the last block may be partial.
    Returns (codes, absmax):
      codes: (w.numel(),) uint8, each the index 0..15 of the NF4_CODE value nearest to w / absmax
        (one code per byte here; bitsandbytes packs two per byte, see pack_4bit);
      absmax: (ceil(w.numel() / blocksize),) float32, the largest |w| of each block.
    """
    return quantize_4bit(w, "nf4", blocksize)


def dequantize_nf4(codes: torch.Tensor, absmax: torch.Tensor, shape, blocksize: int = 64) -> torch.Tensor:
    """The inverse of quantize_nf4: NF4_CODE[codes] * absmax of each block, reshaped to SHAPE.

    codes: (prod(shape),) integer indices 0..15; absmax: (ceil(prod(shape) / blocksize),) float.
    Returns: float32 tensor of SHAPE.
    """
    return dequantize_4bit(codes, absmax, shape, "nf4", blocksize)


def quantization_error(w: torch.Tensor, quant_type: str = "nf4", blocksize: int = 64) -> dict:
    """How much of W a 4-bit round trip loses. w: any shape, float.

    Returns {"rmse", "relative_rmse" (rmse / std of w), "max_abs", "mean_abs", "levels_used" (how
    many distinct code values occur: at most 16, 15 for fp4 and int4, whose two zeros are one)}.
    """
    codes, absmax = quantize_4bit(w, quant_type, blocksize)
    back = dequantize_4bit(codes, absmax, w.shape, quant_type, blocksize)
    err = (back - w.detach().float()).reshape(-1)
    rmse = err.pow(2).mean().sqrt().item()
    return {"rmse": rmse, "relative_rmse": rmse / w.detach().float().std().item(),
            "max_abs": err.abs().max().item(), "mean_abs": err.abs().mean().item(),
            "levels_used": int(CODES_4BIT[quant_type][codes.long()].unique().numel())}


def pack_4bit(codes: torch.Tensor) -> torch.Tensor:
    """Two 4-bit codes per byte, in bitsandbytes' layout: element 2i in the HIGH nibble, 2i+1 low.

    codes: (n,) integer 0..15. Returns: (ceil(n / 2),) uint8. An odd n is padded with code 7 (the
    NF4 zero), the code bitsandbytes' padding value gets.
    """
    codes = codes.reshape(-1).to(torch.uint8)
    if codes.numel() % 2:
        codes = torch.cat([codes, codes.new_full((1,), 7)])
    return (codes[0::2] << 4) | codes[1::2]


def unpack_4bit(packed: torch.Tensor, numel: int) -> torch.Tensor:
    """The inverse of pack_4bit. packed: uint8 of any shape (e.g. bitsandbytes' (n/2, 1)).

    Returns: (numel,) uint8 codes, high nibble first.
    """
    packed = packed.reshape(-1).to(torch.uint8)
    if not 0 <= numel <= 2 * packed.numel():
        raise ValueError(f"{packed.numel()} bytes hold at most {2 * packed.numel()} codes, "
                         f"asked for {numel}.")
    codes = torch.stack([packed >> 4, packed & 0xF], dim=1).reshape(-1)
    return codes[:numel]


# -----------------------------------------------------------------------------
# Double quantisation of the absmax constants


def double_quantize(absmax: torch.Tensor,
                    blocksize: int = 256) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Quantise the NF4 absmax constants to 8 bits, as quantize_4bit(..., compress_statistics=True).

    absmax: (n_blocks,) float, all >= 0. Returns (q_absmax, absmax2, offset):
      offset: float, the mean of absmax, subtracted first: every absmax is positive, so without it
        the negative half of the symmetric 8-bit code would go unused;
      q_absmax: (n_blocks,) uint8, indices into DYNAMIC_CODE of (absmax - offset) / absmax2;
      absmax2: (ceil(n_blocks / blocksize),) float32, the largest |absmax - offset| of each block.
    """
    _check_float(absmax, "absmax")
    check_blocksize(blocksize, DYNAMIC_BLOCKSIZES)
    absmax = absmax.detach().reshape(-1).float()
    offset = absmax.mean()
    q_absmax, absmax2 = quantize_blockwise(absmax - offset, DYNAMIC_CODE.to(absmax.device), blocksize)
    return q_absmax, absmax2, offset.item()


def double_dequantize(q_absmax: torch.Tensor, absmax2: torch.Tensor, offset: float,
                      blocksize: int = 256) -> torch.Tensor:
    """The inverse of double_quantize: DYNAMIC_CODE[q_absmax] * absmax2 + offset.

    q_absmax: (n_blocks,) integer 0..255; absmax2: (ceil(n_blocks / blocksize),) float.
    Returns: (n_blocks,) float32, the absmax constants to pass to dequantize_nf4.
    Rounding is to the nearest code, as bitsandbytes' reference kernel (and its CUDA kernel) does;
    its CPU C kernel sometimes picks the neighbouring code for a value within a hair of a midpoint
    (see tests/test_quant.py).
    """
    check_blocksize(blocksize, DYNAMIC_BLOCKSIZES)
    n_blocks = q_absmax.numel() if isinstance(q_absmax, torch.Tensor) else -1
    _check_codes(q_absmax, absmax2, n_blocks, blocksize, n_codes=256)
    values = dequantize_blockwise(q_absmax, absmax2, DYNAMIC_CODE.to(q_absmax.device), blocksize)
    # offset is a float32 value, so adding it as a Python float rounds exactly as float32 would.
    return values + offset
