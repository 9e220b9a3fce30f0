build/common/dm_error.o: common/dm_error.c common/dm_error.h
common/dm_error.h:
