"""Batched Whisper decoding: many 30-second chunks, from many files, through one model at once.

openai-whisper decodes one window at a time, with a Python step per token, a
`torch.cat` of every key/value cache per step and a Python loop over the rows
in its timestamp rules (a GPU sync per row per token); on a GPU the card waits
on Python. Here all chunks in flight advance one token per step together.

The modules, in the order the data flows through them:

- `jobs`: what comes in and goes out. A `ChunkRequest` (a window's samples,
  log-mel or encoder output, and whisper's DecodingOptions) becomes a `Job`
  with its `Config` (what whisper's DecodingTask reads from the options); the
  result is a `ChunkDecoding`. `EngineOptions` carry the quality guards, the
  batch size and the GPU memory limit the caller passes in.
- `scheduler`: `transcribe_chunks` makes the jobs and runs one `Scheduler`
  pass per group size (beam search rows come in groups). The scheduler owns
  the waiting jobs and the batch: it admits jobs into free slots, steps, and
  every few steps settles finished slots (continuous batching: a finished
  chunk leaves, a later slot moves into its place, a waiting chunk is
  admitted); a chunk failing the quality guards is decoded again at the next
  temperature in its own slot, reusing its encoder output. Its batch size
  comes from `memory` (free GPU memory within the limit passed in), and on
  GPU out-of-memory it halves it.
- `encoder`: on admission, log-mels of chunks given as samples and the
  encoder on batches of chunks (`prepare_model` casts the model once).
- `batch`: the `Batch` of slots in flight, each slot `group` rows, and each
  row's decoding state as tensors (tokens so far, log probability, timestamp
  state), with the `KVCache`.
- `decoder`: the `Decoder` runs whisper's TextDecoder on the batch: cross-
  attention keys/values computed once per chunk on admission, prompts
  prefilled into the self-attention cache, then one `step` per token for all
  rows (self-attention against the cache, cross-attention against the
  chunk's keys), and language detection.
- `rules`: whisper's logit rules (suppress blank and tokens, timestamp
  pairing) as tensor masks over all rows, with no Python loop over rows.
- `choosing`: each row's next token, greedy or sampled at its temperature;
  `beam`: whisper's BeamSearchDecoder for beam slots.
- `results`: a settled slot's best sequence, ranked as whisper ranks it, and
  whisper's quality guards (retry, silence).
- `alignment`: word timings from the cross-attention of whisper's alignment
  heads, computed for finished chunks together while their keys/values are
  still cached.
- `segments`: a window's segments, cut at timestamp pairs, with their words.

Greedy decoding returns exactly the tokens `whisper.decode` returns for each
chunk alone (tests/test_engine.py); beam search follows whisper's
BeamSearchDecoder step for step. Times in results are seconds from the start
of each chunk; the transcription stage maps them onto the file's timeline.
torch and whisper are imported inside functions, so importing this package is cheap.
"""

from daemon.engine.encoder import (
    compute_dtype,
    encode,
    language_probabilities,
    log_mel,
    prepare_model,
    vote_language,
)
from daemon.engine.jobs import ChunkDecoding, ChunkRequest, EngineOptions
from daemon.engine.memory import cuda_index, memory_available, pick_batch_size, usable_memory
from daemon.engine.scheduler import transcribe_chunks
from daemon.engine.segments import assign_words, split_segments

__all__ = [
    "ChunkDecoding",
    "ChunkRequest",
    "EngineOptions",
    "assign_words",
    "compute_dtype",
    "cuda_index",
    "encode",
    "language_probabilities",
    "log_mel",
    "memory_available",
    "pick_batch_size",
    "prepare_model",
    "split_segments",
    "transcribe_chunks",
    "usable_memory",
    "vote_language",
]
