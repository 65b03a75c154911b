"""Prefect flows: one thin flow per stage and the `t2v-full` pipeline. Only this package imports prefect."""
