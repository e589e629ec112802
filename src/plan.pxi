# The planner: how an (outer, C, inner) array is cut into blocks, chunks and tasks, and how
# tasks are run (included by _kernels.pyx).
#
# Work is cut by the shape alone, never by the thread count (docs/design.md §3): each
# channel's elements form blocks (two-pass Welford in cache), consecutive blocks form chunks,
# and a task is one chunk of one channel (or of one tile of channels when inner == 1).  Chunk
# states are merged in chunk order after the parallel loop, so every result is bit-identical
# for every thread count.

cdef enum:
    # Elements per block of runs: a second pass, when the shift guess was poor, must find
    # the block in L1/L2.
    BLOCK = 4096
    # Elements per block of tile rows (inner == 1) for the plain statistics: large, to
    # amortize each block's per-channel finish (the shifted sums turned into a mean and M2,
    # merged into the chunk's state) and each chunk's shift probe and merge: 256 rows of a
    # 1,024-channel tile (1 MiB of float32; a second pass, rare, reads it from L3).
    # Against 65,536 (with 256-channel tiles, below) the statistics of float32 (4096, 1024),
    # (1024, 4096) and (8192, 512) took 0.74-0.85x the time (1 thread, side by side; issue
    # 14's measurements in docs/benchmarks.md).
    TILE_BLOCK = 262144
    # The backward sums (one pass, no per-block finish) and the weighted NaN-skipping
    # statistics keep 16,384: the latter took 1.3-1.6x the time with 65,536 blocks, the
    # former gained nothing measurable.
    SMALL_TILE_BLOCK = 16384
    # A block never holds more than this many values of one channel (rows of a tile).
    TILE_BLOCK_ROWS = 65536
    # The first block of a chunk is shifted by the mean of its first few values per channel:
    # close enough to the mean that the second pass is rarely needed.
    SHIFT_PROBE = 8
    # Channels per task when inner == 1 (the loops run along C inside a tile): up to 1,024
    # for the statistics, which stream whole rows of up to 4 KiB of float32 that way (the
    # sums of 256-channel tiles took 1.3x the time of whole 1,024-channel rows, C harness,
    # 1 thread); 512 for the backward sums (two inputs), 256 for the weighted NaN-skipping
    # statistics. Measured against 128/256/512/1024 for C = 256-2048 (2-core EPYC, same
    # run): the backward sums took 1.1-1.3x the time with 256 as with 512.
    # An array of few rows still gets up to MIN_TILE_TASKS tasks, one per TILE_TASK_VALUES, for
    # the threads its work is worth: narrower tiles of the same block height (down to
    # NARROW_TILE_C channels) while there are fewer than WHOLE_ROW_CHUNKS blocks, then lower
    # blocks (down to MIN_TILE_ROWS rows). (1024, 1024) is 16 tasks of 256 channels x 256
    # rows, as before the wide tiles, (4096, 1024) 16 tasks of whole rows.
    TILE_C = 1024
    NARROW_TILE_C = 256
    MIN_TILE_TASKS = 16
    TILE_TASK_VALUES = 65536
    MIN_TILE_ROWS = 256
    GRAD_TILE_C = 512
    MASKED_TILE_C = 256
    # Channels per task of the merge of chunk states (stats.pxi's merge_body).
    MERGE_C = 256
    # Reduction tasks take whole rows (every tile of a chunk) when there are this many chunks.
    WHOLE_ROW_CHUNKS = 8
    # The elementwise loops of the inner == 1 layout run along rows of at least this many
    # elements: several samples side by side when C is small, with the coefficients
    # repeated to match ...
    ROW_MIN = 64
    # ... over segments of about this many elements (four rows or more) per task.
    ROW_SEGMENT = 8192
    # Chunks per channel task are added until there are this many tasks (shape-only, so
    # results do not depend on the thread count) ...
    TARGET_TASKS = 64
    # ... but a chunk never shrinks below this many elements.
    MIN_CHUNK = 32768
    # A thread is only woken for at least this many elements of work: some 30-60 us at one
    # thread, against a helper's wake-up of 10-50 us on a VM and longer on a busy machine.
    # (65,536 before the pool: a 0.25 MiB backward then went to two threads, 0.7x the time
    # on a quiet machine and up to 8x its median at the 90th percentile on a busy one.)
    MIN_PER_THREAD = 131072
    # Channels of at most this many bytes (runs layout) are reduced and then normalized by
    # one task while they sit in L2/L3: the training forward then reads x once from memory.
    FUSE_MAX_BYTES = 1 << 20
    # ... provided there are enough channels to keep every thread busy ...
    FUSE_MIN_C = 16
    # ... and the runs are long enough for the strided walk over one channel to stream.
    # Shorter runs are written faster by a separate pass in memory order: (64,256,14,14)
    # float32 (784-byte runs) trains in 1.3 ms that way against 2.1 ms fused (2 threads,
    # 2-core EPYC); at 4 KiB runs the separate pass still won by 1.1-1.5x, at 8 KiB and
    # more the two were within the machine's noise.
    FUSE_MIN_RUN_BYTES = 8192


cdef struct Plan:
    intp outer, C, inner
    bint tiled             # inner == 1 and C > 1: tasks are tiles of channels
    intp n_ctasks          # channel tasks: C, or the number of tiles
    intp ctile             # channels per tile
    intp rows_per_block    # outer rows per block
    intp pieces            # blocks per row when a run is longer than BLOCK, else 1
    intp piece_len
    intp n_blocks          # blocks per channel task
    intp blocks_per_chunk
    intp n_chunks
    bint fused             # one chunk per channel, small enough to stay in cache between
                           # the statistics pass and the elementwise pass
    bint whole_rows        # tiled, and each reduction task takes every tile of its chunk


cdef inline intp ceil_div(intp a, intp b) noexcept nogil:
    return (a + b - 1) // b


cdef Plan make_plan(intp outer, intp C, intp inner, intp itemsize,
                    bint keep_tiles=False, intp tile_c=TILE_C) noexcept nogil:
    """Cut a (outer, C, inner) array of itemsize-byte elements into blocks and chunks, by its
    shape alone (never by the thread count).

    keep_tiles: keep the tiled (inner == 1) layout even for a single channel.
    tile_c: at most this many channels per tile (TILE_C or GRAD_TILE_C).
    """
    cdef Plan p
    cdef intp per_block, per_ctask, n_target, wanted
    if C == 0 or outer * inner == 0:
        # Nothing to cut (entry points return before using it); keep every field sane.
        p.outer, p.C, p.inner = outer, C, inner
        p.tiled = inner == 1
        p.n_ctasks = p.ctile = p.rows_per_block = p.pieces = p.piece_len = 1
        p.n_blocks = p.blocks_per_chunk = p.n_chunks = 1
        p.fused = p.whole_rows = False
        return p
    if inner == 1 and C == 1 and not keep_tiles:
        # A single channel of contiguous scalars is one long run.
        inner = outer
        outer = 1
    p.outer = outer
    p.C = C
    p.inner = inner
    p.tiled = inner == 1
    if p.tiled:
        # keep_tiles and GRAD_TILE_C: the masked statistics and the backward sums.
        per_block = (TILE_BLOCK if tile_c == TILE_C and not keep_tiles else SMALL_TILE_BLOCK)
        p.n_ctasks = ceil_div(C, tile_c)
        p.ctile = ceil_div(C, p.n_ctasks)
        p.rows_per_block = max(4, min(TILE_BLOCK_ROWS, per_block // p.ctile))
        p.n_blocks = ceil_div(outer, p.rows_per_block)
        if tile_c == TILE_C and not keep_tiles:
            # The plain statistics want enough tasks for the threads the work is worth:
            # first narrower tiles of the same block height (down to NARROW_TILE_C
            # channels), then lower blocks (down to MIN_TILE_ROWS rows).
            wanted = min(MIN_TILE_TASKS, outer * C // TILE_TASK_VALUES)
            while (p.n_ctasks * p.n_blocks < wanted and p.n_blocks < WHOLE_ROW_CHUNKS
                   and p.ctile > NARROW_TILE_C):
                p.n_ctasks += 1
                p.ctile = ceil_div(C, p.n_ctasks)
            if p.n_ctasks * p.n_blocks < wanted and p.rows_per_block > MIN_TILE_ROWS:
                p.rows_per_block = max(MIN_TILE_ROWS, ceil_div(
                    outer, ceil_div(wanted, p.n_ctasks)))
                p.n_blocks = ceil_div(outer, p.rows_per_block)
        p.pieces = 1
        p.piece_len = 1
        per_block = p.rows_per_block * p.ctile
    else:
        p.n_ctasks = C
        p.ctile = 1
        if inner > BLOCK:
            p.pieces = ceil_div(inner, BLOCK)
            p.piece_len = ceil_div(inner, p.pieces)
            p.rows_per_block = 1
            per_block = p.piece_len
            p.n_blocks = outer * p.pieces
        else:
            p.pieces = 1
            p.piece_len = inner
            p.rows_per_block = max(1, BLOCK // max(inner, 1))
            per_block = p.rows_per_block * inner
            p.n_blocks = ceil_div(outer, p.rows_per_block)
    per_ctask = outer * inner * p.ctile
    n_target = min(ceil_div(TARGET_TASKS, max(p.n_ctasks, 1)), max(1, per_ctask // MIN_CHUNK))
    n_target = max(1, min(n_target, p.n_blocks))
    p.fused = (not p.tiled and C >= FUSE_MIN_C
               and outer * inner * itemsize <= FUSE_MAX_BYTES
               and inner * itemsize >= FUSE_MIN_RUN_BYTES)
    if p.fused:
        n_target = 1
    p.blocks_per_chunk = max(1, ceil_div(p.n_blocks, n_target))
    p.n_chunks = max(1, ceil_div(p.n_blocks, p.blocks_per_chunk))
    # Tiles of part of a row stream badly one at a time: with chunks enough to share out,
    # one reduction task takes every tile of its chunk, block by block (same bits either way).
    p.whole_rows = p.tiled and p.n_ctasks > 1 and p.n_chunks >= WHOLE_ROW_CHUNKS
    return p


cdef inline void run_block(const Plan *p, intp b, intp *row0, intp *nrows, intp *start,
                           intp *length) noexcept nogil:
    """Rows and columns of block b of a channel in the runs layout."""
    if p.pieces == 1:
        row0[0] = b * p.rows_per_block
        nrows[0] = min(p.rows_per_block, p.outer - row0[0])
        start[0] = 0
        length[0] = p.inner
    else:
        row0[0] = b // p.pieces
        nrows[0] = 1
        start[0] = (b % p.pieces) * p.piece_len
        length[0] = min(p.piece_len, p.inner - start[0])


# --- How the elementwise passes walk the tiled (inner == 1) layout ---------------------------

cdef struct RowPlan:
    intp span              # samples per row
    intp width             # elements per row: span * C
    intp n_rows            # whole rows
    intp rem_cols          # elements of the short last row (outer % span samples), or 0
    intp per_seg           # rows per segment
    intp n_segments


cdef RowPlan row_plan(const Plan *p) noexcept nogil:
    """How the elementwise passes walk the tiled layout: rows of `span` samples."""
    cdef RowPlan r
    r.span = max(1, min(ceil_div(ROW_MIN, p.C), p.outer))
    r.width = r.span * p.C
    r.n_rows = p.outer // r.span
    r.rem_cols = (p.outer % r.span) * p.C
    r.per_seg = max(4, ROW_SEGMENT // r.width // 4 * 4)
    r.n_segments = ceil_div(r.n_rows, r.per_seg) + (1 if r.rem_cols else 0)
    return r


cdef inline void row_segment(const RowPlan *r, intp seg, intp *off, intp *nrows,
                             intp *ncols) noexcept nogil:
    """First element, rows and row length of segment seg."""
    cdef intp first = seg * r.per_seg
    if first < r.n_rows:
        off[0] = first * r.width
        nrows[0] = min(r.per_seg, r.n_rows - first)
        ncols[0] = r.width
    else:
        off[0] = r.n_rows * r.width
        nrows[0] = 1
        ncols[0] = r.rem_cols


cdef inline intp elementwise_tasks(const Plan *p, const RowPlan *r) noexcept nogil:
    """Tasks of an elementwise pass: pieces of (sample, channel) runs, or segments of rows."""
    return r.n_segments if p.tiled else p.outer * p.C * p.pieces


# --- Running tasks --------------------------------------------------------------------------

cdef inline int n_threads_for(int requested, intp work, intp n_tasks) noexcept nogil:
    """Threads worth waking for `work` elements split into `n_tasks` tasks."""
    cdef intp t = requested if requested > 0 else bn_default_threads()
    # More threads than processors never helps these loops (and thousands of them would
    # only cost memory).
    t = min(t, bn_num_procs(), n_tasks, max(1, work // MIN_PER_THREAD))
    return <int>max(1, t)


cdef enum Schedule:
    DYNAMIC     # tasks of unequal cost (reductions, whole channels): one per claim
    GUIDED      # many tasks of equal cost (elementwise segments): a few per claim


cdef void run_tasks(void (*task)(const floating *, void *, intp) noexcept nogil,
                    const floating *x, void *job, intp n_tasks, int nt,
                    Schedule schedule) noexcept nogil:
    """task(x, job, i) for every i < n_tasks, on up to nt threads (this one included).

    The one place where work goes to several threads: bn_pool.h's pool, where the calling
    thread claims tasks like its helpers and never waits for a helper that has not started
    (docs/design.md §3). With nt == 1 the tasks run here, with no pool at all. Without the
    pool (Windows) an OpenMP loop runs them, or a plain loop in a build without OpenMP.
    """
    cdef intp i, per
    cdef bn_task_call call
    if nt <= 1:
        for i in range(n_tasks):
            task(x, job, i)
        return
    if bn_pool_enabled():
        call.task = <bn_any_fn>task
        call.x = <const void *>x
        call.job = job
        # Equal tasks are claimed in groups: about 16 claims per thread still balance them.
        per = 1 if schedule == DYNAMIC else max(1, n_tasks // (16 * nt))
        if floating is float:
            bn_pool_run(bn_call_f32, &call, n_tasks, nt, per)
        elif floating is double:
            bn_pool_run(bn_call_f64, &call, n_tasks, nt, per)
        elif floating is bn_f16:
            bn_pool_run(bn_call_f16, &call, n_tasks, nt, per)
        else:
            bn_pool_run(bn_call_bf16, &call, n_tasks, nt, per)
    elif schedule == GUIDED:
        for i in prange(n_tasks, num_threads=nt, schedule='guided'):
            task(x, job, i)
    else:
        for i in prange(n_tasks, num_threads=nt, schedule='dynamic'):
            task(x, job, i)
