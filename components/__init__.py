"""t2v-pipeline stage components: data, vae, dit, eval, and the shared core."""
