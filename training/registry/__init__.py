"""Where models live: the MLflow stores and registry look-ups (`store`), run logging and
registration (`runs`), the promotion gates (`promote`) and the MLflow pyfunc face
(`pyfunc_model`)."""
