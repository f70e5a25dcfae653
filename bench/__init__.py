"""Speed benchmarks and their helpers, outside the library: the engine and the LoRA update next to
plain transformers (:mod:`bench.speed` runs the cases of :mod:`bench.cases` into the table of
:mod:`bench.report`, ``python -m bench``), the plain-transformers baseline
(:mod:`bench.baseline`), the hardware's floors (:mod:`bench.hardware`), random-weight models with the
real 7B shapes (:mod:`bench.shapes`) and a backend that scripts turn lengths on a real model
(:mod:`bench.forced`, also used by the tests). Nothing in ``mgpo/`` imports this package."""
