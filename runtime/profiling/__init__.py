"""`plan profile`: time the runtime's own layers into profile tables (the format is
costmodel.profile_table, the only costmodel module the runtime imports)."""
