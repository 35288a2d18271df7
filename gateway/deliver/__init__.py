"""Acting on routes: each module delivers one kind of Route (IDeliveryTarget)."""
