"""`python -m t2istudy ...` is the `t2istudy` command (t2istudy.study.cli)."""

from t2istudy.study.cli import main

raise SystemExit(main())
