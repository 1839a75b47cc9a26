"""``python -m tibspace.synthetic``: write a synthetic HCC image with its ground truth."""

from tibspace.synthetic.tissue import main

raise SystemExit(main())
