"""``fraud bench``: the project's throughput, latency, HTTP and training numbers, measured in one run
next to the practical limit of Python scoring and a naive Faust baseline.

Every phase runs against the same broker and the same generated transactions (one
``producers.synthetic`` run; each phase takes a prefix of it), and every measured program runs
in its own process so that the numbers are those of one Python process each, as deployed:

1. **limit**: a minimal confluent-kafka + orjson loop (``python -m benchmarks limit``):
   consume a pre-filled topic in batches, parse, score the batch with one call of the project's
   trained model on the raw-field features (history features left at zero), produce decisions.
   What Kafka, JSON and one batched model call cost: the ceiling for a Python scorer here.
2. **naive**: a plain Faust agent in its own tiny app (``python -m benchmarks naive``): one
   ``predict_proba`` and one ``await topic.send()`` per message, the way the systems this project
   replaces work.
3. **worker**: ``fraud worker`` itself, with real features, card state and model: saturated
   throughput draining a pre-filled topic (tx/s, CPU µs per transaction), then the latency from
   a transaction's Kafka record timestamp to its decision's at a fixed offered rate, published
   by the project's :class:`~producers.publisher.Publisher`. Both twice: on the cards' first
   days (short histories), then, after an unmeasured warm-up that streams the rest of a month
   of traffic for the same cards, at steady state (report keys ending in ``_month``: the
   headline numbers). The month-deep saturated backlog is pre-filled with the worker stopped
   (SIGSTOP), so it drains a backlog as in the first pass.
4. **predict**: after the month-deep phases, ``fraud api`` as configured by default (card
   state from its own copy of the card table, restored from the changelog at start), the same
   with card state read from the running worker per request, and,
   beside them, a no-op route with the same body and response models in the same uvicorn setup
   (``python -m benchmarks noop``), all driven by an async HTTP client (aiohttp; httpx
   with ``--http-client httpx``) in a separate process (``python -m benchmarks http``)
   at concurrency 1 and 16.
5. **train**: ``fraud train`` on a generated CSV of at least ``--rows`` rows: wall time and the
   peak RSS of that process. Its model is the one every other phase scores with.

Resident memory: ``worker_rss_mb`` and ``api_rss_mb`` (``api_via_worker_rss_mb``) are each
process's peak (VmHWM), read after the ``/predict`` phase. ``python -m benchmarks.memory``
measures the bytes per entry of what every process holds whole (merchant risk, card table).

The numbers are only comparable within one run: the machine (often small and shared) moves
them between runs, which is why the limit and the baseline are re-measured every time.
"""
