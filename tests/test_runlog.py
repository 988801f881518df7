"""A run's run.log holds its own lines, each naming the run, and no later run's (runs that follow each other in
one process: the test suite, a one-part benchmark)."""

import logging

from harness import runlog


def test_each_run_log_holds_only_its_own_run(tmp_path):
    log = logging.getLogger("harness.test_runlog")
    try:
        for label in ("es", "grpo"):
            runlog.set_run(label, 0)
            runlog.attach_file(tmp_path / label)
            runlog.attach_file(tmp_path / label)  # a second context for the same run: still one file handler
            log.info("line of %s", label)
        es, grpo = ((tmp_path / name / runlog.LOG_FILE).read_text() for name in ("es", "grpo"))
        assert es.count("es-s0 harness.test_runlog: line of es") == 1 and "grpo" not in es
        assert grpo.count("grpo-s0 harness.test_runlog: line of grpo") == 1
    finally:
        root = logging.getLogger()
        for h in [h for h in root.handlers if isinstance(h, runlog.RunLogHandler)]:
            root.removeHandler(h)
            h.close()
        runlog.set_run("")
