DROP TABLE sealing_keys;
