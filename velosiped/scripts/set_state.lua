-- KEYS: files hash, counters hash, errors hash, jobs hash. ARGV: file, new state, rows, error, now.
return set_state(KEYS[1], KEYS[2], KEYS[3], KEYS[4], unpack(ARGV))
