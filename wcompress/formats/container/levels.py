"""Context-modelled range coding of integer quantization levels: the bytes of the container's `ecq` encoding.

A tensor's levels are read as a plane (long, short): its channel axis (quantization.channel_axis) last, the
other axes flattened, transposed when that makes the second axis the shorter. The plane is coded one column
("slice") at a time. Each level's context is known before its slice is decoded, so a whole slice decodes in
a few vectorised calls (a slice of a VGG-sized kernel holds thousands of levels):

- a = |level| one slice back (0, 1, 2+), b = |level| two slices back (0, 1+), and whether this row has
  held any non-zero level yet: 3 x 2 x 2 = 12 contexts. Measured on MTT_musicnn's kernels, these take the
  levels 19% below their order-0 entropy (whole input rows at zero); on fer and mhcnuggets about 1%.
- Per context, the magnitude min(|level|, ESCAPE) is coded with a categorical model whose counts this
  tensor's header carries (two passes: the models are the tensor's own statistics, so the cost is the
  conditional entropy plus the header). Each context has its own range-coded stream, so the encoder codes
  each in one call.
- The signs of the non-zero levels, in slice order, with one Bernoulli model; magnitudes of ESCAPE and more
  keep the rest (|level| - ESCAPE) in an escape list.

A plane whose levels are mostly large (a bias or a batch norm quantized with one step for the tensor: levels
in the tens or hundreds, where the escape list would spend 32 bits each) is coded instead as Exp-Golomb codes
of its levels less their median (mode GOLOMB): about log2 of a level's spread plus two bits each, no tables.

The coder core is `constriction`'s range coder (queue: decoded in the order encoded). Everything the blob
declares is checked against the plane's size before anything is allocated, and what decodes is checked
against the declared counts: a damaged blob is a ValueError, never a wrong tensor.
"""

import numpy as np

ESCAPE = 16
CONTEXTS = 12
GOLOMB = 0
# The blob's first byte: how many contexts it models, or GOLOMB. A small tensor's twelve tables and streams can
# cost more than they save (a stream is whole 32-bit words): the encoder tries one context too, and Exp-Golomb
# codes, and keeps the smallest. GOLOMB is version 8 of the container.
MODES = (CONTEXTS, 1, GOLOMB)
SMALL = 1 << 16
MAX_LEVEL = 1 << 24  # |level| bound: exact in float32 and int32
MAX_GOLOMB_K = 24
MAX_CODE_BITS = 27  # a level less the median, zigzagged, plus 2^k: below 2^27


def _models():
    import constriction

    return constriction.stream.model, constriction.stream.queue


def plane_shape(shape, axis):
    """(long, short, transposed) of the plane a tensor of `shape` quantized along `axis` is read as; axis None
    (one step for the whole tensor): a single column."""
    if axis is None:
        return int(np.prod(shape, dtype=np.int64)), 1, False
    channels = int(shape[axis])
    rows = int(np.prod(shape, dtype=np.int64)) // max(channels, 1)
    return (rows, channels, False) if rows >= channels else (channels, rows, True)


def to_plane(levels, axis):
    if axis is None:
        return np.asarray(levels).reshape(-1, 1)
    moved = np.moveaxis(levels, axis, -1)
    flat = moved.reshape(-1, moved.shape[-1])
    return flat if flat.shape[0] >= flat.shape[1] else flat.T


def from_plane(plane, shape, axis):
    if axis is None:
        return plane.reshape(shape)
    long, short, transposed = plane_shape(shape, axis)
    flat = plane.T if transposed else plane
    moved_shape = tuple(np.delete(np.asarray(shape), axis)) + (shape[axis],)
    return np.moveaxis(flat.reshape(moved_shape), -1, axis)


def _contexts(one_back, two_back, seen):
    return np.minimum(one_back, 2) * 4 + np.minimum(two_back, 1) * 2 + seen


def _all_contexts(magnitudes):
    """The context of every level of a (long, short) plane of magnitudes, as the decoder will find it."""
    one = np.zeros_like(magnitudes)
    one[:, 1:] = magnitudes[:, :-1]
    two = np.zeros_like(magnitudes)
    two[:, 2:] = magnitudes[:, :-2]
    seen = np.zeros_like(magnitudes)
    seen[:, 1:] = np.maximum.accumulate(magnitudes[:, :-1] > 0, axis=1)
    return _contexts(one, two, seen)


def _varints(values):
    out = bytearray()
    for v in values:
        v = int(v)
        while v >= 0x80:
            out.append((v & 0x7F) | 0x80)
            v >>= 7
        out.append(v)
    return bytes(out)


def _read_varints(data, offset, count, limit):
    values = []
    for _ in range(count):
        value, shift = 0, 0
        while True:
            if offset >= len(data) or shift > 56:
                raise ValueError("ecq header is truncated")
            byte = data[offset]
            offset += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
        if value > limit:
            raise ValueError("ecq header declares more levels than the tensor holds")
        values.append(value)
    return values, offset


def _probabilities(counts):
    return counts.astype(np.float64) if counts.sum() else np.ones_like(counts, dtype=np.float64)


def encode(plane):
    """The bytes (uint8 array) of a (long, short) int plane of levels, |level| < MAX_LEVEL."""
    plane = np.asarray(plane, dtype=np.int32)
    magnitudes = np.abs(plane)
    if magnitudes.size and int(magnitudes.max()) >= MAX_LEVEL:
        raise ValueError(f"level {int(magnitudes.max())} beyond {MAX_LEVEL}")
    symbols = np.minimum(magnitudes, ESCAPE)
    if plane.size > SMALL:
        escaped = int(np.count_nonzero(symbols == ESCAPE))
        blobs = [_encode(plane, symbols, CONTEXTS)] + ([_encode_golomb(plane)] if escaped > plane.size // 8 else [])
    else:
        blobs = [_encode_golomb(plane) if mode == GOLOMB else _encode(plane, symbols, mode) for mode in MODES]
    return min(blobs, key=lambda blob: blob.nbytes)


def _zigzag(values):
    return np.where(values >= 0, 2 * values, -2 * values - 1)


def _bit_lengths(values):
    """The bit length of each positive int64 below 2^53 (frexp is exact there)."""
    return np.frexp(values.astype(np.float64))[1].astype(np.int64)


def _encode_golomb(plane):
    """Exp-Golomb-k codes of zigzag(level - median) in slice order, bit-packed (most significant bit first):
    for v = zigzag + 2^k of bit length b, b - k - 1 zeros, then v's b bits. k is the cheapest for this plane."""
    flat = np.asarray(plane, np.int64).T.reshape(-1)
    centre = int(np.rint(np.median(flat))) if flat.size else 0
    zig = _zigzag(flat - centre)
    costs = [int((2 * _bit_lengths(zig + (1 << k)) - k - 1).sum()) for k in range(MAX_GOLOMB_K + 1)]
    k = int(np.argmin(costs))
    value = zig + (1 << k)
    width = _bit_lengths(value)
    lengths = 2 * width - k - 1
    starts = np.cumsum(lengths) - lengths
    owner = np.repeat(np.arange(flat.size), width)
    within = np.arange(owner.size) - np.repeat(np.cumsum(width) - width, width)
    bits = np.zeros(int(lengths.sum()), dtype=np.uint8)
    bits[starts[owner] + (width - k - 1)[owner] + within] = (value[owner] >> (width[owner] - 1 - within)) & 1
    header = _varints([*plane.shape, k, int(_zigzag(np.int64(centre)))])
    return np.frombuffer(bytes([GOLOMB]) + header + np.packbits(bits).tobytes(), dtype=np.uint8)


def _decode_golomb(raw, offset, long, short):
    (k, centre), offset = _read_varints(raw, offset, 2, 2 * MAX_LEVEL)
    if k > MAX_GOLOMB_K:
        raise ValueError("ecq Exp-Golomb parameter out of range")
    centre = centre // 2 if centre % 2 == 0 else -(centre + 1) // 2
    bits = np.unpackbits(np.frombuffer(raw, dtype=np.uint8, offset=offset))
    ones = np.flatnonzero(bits)
    powers = 1 << np.arange(MAX_CODE_BITS - 1, -1, -1, dtype=np.int64)
    out = np.empty(long * short, dtype=np.int64)
    position = 0
    for i in range(out.size):
        found = np.searchsorted(ones, position)
        if found == ones.size:
            raise ValueError("ecq Exp-Golomb codes end early")
        first = int(ones[found])
        width = first - position + k + 1
        if width > MAX_CODE_BITS or first + width > bits.size:
            raise ValueError("ecq Exp-Golomb code too long")
        out[i] = int(bits[first:first + width] @ powers[-width:])
        position = first + width
    if bits.size - position >= 8 or bits[position:].any():
        raise ValueError("ecq Exp-Golomb codes do not fill their bytes")
    zig = out - (1 << k)
    levels = np.where(zig % 2 == 0, zig // 2, -(zig + 1) // 2) + centre
    if levels.size and int(np.abs(levels).max()) >= MAX_LEVEL:
        raise ValueError("ecq level beyond the largest level")
    return np.ascontiguousarray(levels.astype(np.int32).reshape(short, long).T)


def _encode(plane, symbols, mode):
    model, queue = _models()
    # Slice order: the plane's columns one after the other.
    context = (_all_contexts(symbols) if mode > 1 else np.zeros_like(symbols)).T.reshape(-1)
    symbols_t = symbols.T.reshape(-1)
    counts = np.bincount(context * (ESCAPE + 1) + symbols_t, minlength=mode * (ESCAPE + 1)).reshape(mode, -1)
    streams = []
    for k in range(mode):
        encoder = queue.RangeEncoder()
        chosen = symbols_t[context == k]
        if chosen.size:
            encoder.encode(chosen, model.Categorical(_probabilities(counts[k]), perfect=False))
        streams.append(encoder.get_compressed())
    nonzero = plane.T.reshape(-1)
    nonzero = nonzero[nonzero != 0]
    negative = (nonzero < 0).astype(np.int32)
    signs = queue.RangeEncoder()
    if negative.size:
        signs.encode(negative, _sign_model(model, int(negative.sum()), negative.size))
    streams.append(signs.get_compressed())
    escapes = np.abs(nonzero[np.abs(nonzero) >= ESCAPE]) - ESCAPE
    # Per context: how many magnitudes its table lists (the rest count zero), then those counts.
    tables = []
    for row in counts:
        listed = int(np.flatnonzero(row).max(initial=-1)) + 1
        tables += [listed, *row[:listed]]
    header = _varints([*plane.shape, escapes.size, int(negative.sum()), *tables, *(s.size for s in streams)])
    body = [bytes([mode]), header,
            *(s.astype("<u4").tobytes() for s in streams), escapes.astype("<u4").tobytes()]
    return np.frombuffer(b"".join(body), dtype=np.uint8)


def _sign_model(model, negatives, nonzeros):
    return model.Bernoulli(min(max(negatives / nonzeros, 1e-6), 1 - 1e-6), perfect=False)


def decode(data, long, short):
    """The (long, short) int32 plane from `encode`'s bytes; ValueError when they do not hold one."""
    model, queue = _models()
    raw = np.asarray(data, dtype=np.uint8).tobytes()
    if not raw or raw[0] not in MODES:
        raise ValueError("not an ecq stream")
    mode, size = raw[0], long * short
    (declared_long, declared_short), offset = _read_varints(raw, 1, 2, 2**40)
    if (declared_long, declared_short) != (long, short):
        raise ValueError(f"ecq stream declares a {declared_long} x {declared_short} plane, {long} x {short} expected")
    if mode == GOLOMB:
        return _decode_golomb(raw, offset, long, short)
    (escapes, negatives), offset = _read_varints(raw, offset, 2, 2**40)
    counts = np.zeros((mode, ESCAPE + 1), dtype=np.int64)
    for k in range(mode):
        (listed,), offset = _read_varints(raw, offset, 1, ESCAPE + 1)
        counts[k, :listed], offset = _read_varints(raw, offset, listed, size)
    lengths, offset = _read_varints(raw, offset, mode + 1, len(raw))
    nonzeros = int(counts[:, 1:].sum())
    if int(counts.sum()) != size or int(counts[:, ESCAPE].sum()) != escapes or negatives > nonzeros:
        raise ValueError("ecq header counts do not add up to the plane")
    if offset + 4 * sum(lengths) + 4 * escapes != len(raw):
        raise ValueError("ecq stream lengths do not add up to its bytes")
    words = []
    for length in lengths:
        words.append(np.frombuffer(raw, dtype="<u4", count=length, offset=offset).astype(np.uint32))
        offset += 4 * length
    extra = np.frombuffer(raw, dtype="<u4", count=escapes, offset=offset)
    if escapes and int(extra.max()) >= MAX_LEVEL - ESCAPE:
        raise ValueError("ecq escape beyond the largest level")
    try:
        slices = _decode_magnitudes(model, queue, counts, words, long, short)
        signs = np.zeros(nonzeros, dtype=np.int32)
        if nonzeros:
            signs = queue.RangeDecoder(words[mode]).decode(_sign_model(model, negatives, nonzeros), nonzeros)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # a Rust panic arrives as pyo3's PanicException, a BaseException
        raise ValueError(f"damaged ecq stream ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") \
            from exc
    if int(signs.sum()) != negatives:
        raise ValueError("ecq signs do not match the header")
    flat = slices.reshape(-1)  # a view: the levels in slice order, as the signs and escapes are listed
    where = np.flatnonzero(flat)
    flat[where[flat[where] == ESCAPE]] += extra.astype(np.int32)
    flat[where[signs.astype(bool)]] *= -1
    return np.ascontiguousarray(slices.T)


def _decode_magnitudes(model, queue, counts, words, long, short):
    decoders = [queue.RangeDecoder(w) for w in words[:len(counts)]]
    models = [model.Categorical(_probabilities(c), perfect=False) if c.sum() else None for c in counts]
    if len(counts) == 1:  # no context: one call
        slices = np.zeros(short * long, dtype=np.int32)
        if slices.size:
            slices[:] = decoders[0].decode(models[0], slices.size)
        if not np.array_equal(np.bincount(slices, minlength=ESCAPE + 1), counts[0]):
            raise ValueError("ecq levels do not match their declared counts")
        return slices.reshape(short, long)
    slices = np.zeros((short, long), dtype=np.int32)
    one, two, seen = (np.zeros(long, dtype=np.int32) for _ in range(3))
    histogram = np.zeros(counts.size, dtype=np.int64)
    for s in range(short):
        context = _contexts(one, two, seen)
        sizes = np.bincount(context, minlength=CONTEXTS)
        order = np.argsort(context, kind="stable")
        row, start = slices[s], 0
        for k in np.flatnonzero(sizes):
            end = start + sizes[k]
            if models[k] is None:
                raise ValueError("ecq levels fall in a context the header says is empty")
            row[order[start:end]] = decoders[k].decode(models[k], int(sizes[k]))
            start = end
        histogram += np.bincount(context * (ESCAPE + 1) + row, minlength=counts.size)
        two, one = one, row
        seen = seen | (row > 0)
    if not np.array_equal(histogram, counts.reshape(-1)):
        raise ValueError("ecq levels do not match their declared counts")
    return slices


def order0_bits(levels):
    """The order-0 entropy of the levels, in bits (what a context-free coder at its bound would spend)."""
    _, counts = np.unique(np.asarray(levels).reshape(-1), return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum())
