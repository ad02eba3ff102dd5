"""An embedding version's life: backfill, promotion, retirement; adopting a first-release table."""
