"""eval component: how well a trained DiT follows its prompts (`components.eval.dit.evaluate_dit`, CLI
`t2v dit eval` / `t2v eval dit`). It may import every other component; nothing imports it."""
