commit(KEYS[1], 1)
return 1
