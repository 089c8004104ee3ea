"""The `blockprune` command: the composition root that puts the engine's and the service's
commands under one name. core/ stays free of service imports; service commands load lazily."""
