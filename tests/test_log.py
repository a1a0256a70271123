"""tftrain's messages as log.setup shows them: information on stdout, warnings (prefixed) and progress on stderr."""

from __future__ import annotations

import logging

from tftrain import log


def test_information_warnings_and_progress_go_where_the_cli_shows_them(capsys):
    log.setup()
    logging.getLogger("tftrain.training.trainer").info("training cnn")
    logging.getLogger("tftrain.data.folders").warning("skipped unreadable image a.png")
    log.progress_log.info("reading 1,000 images")
    logging.getLogger("tftrain.data.folders").debug("not shown without verbose")
    out, err = capsys.readouterr()
    assert out == "training cnn\n"
    assert err == "warning: skipped unreadable image a.png\nreading 1,000 images\n"


def test_setup_twice_shows_each_line_once_and_verbose_adds_debug(capsys):
    log.setup(verbose=True)
    log.setup(verbose=True)
    logging.getLogger("tftrain.x").debug("detail")
    assert capsys.readouterr().out == "detail\n"
    log.setup()
