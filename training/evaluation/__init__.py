"""Judging a model: metric primitives (`metrics`), one whole evaluation (`evaluate`), a model's
evaluation, explained sample and paired comparison (`model`), the HTML report (`report`, `card`,
`plots`, `formatting`) and drift against the training reference (`drift`)."""
