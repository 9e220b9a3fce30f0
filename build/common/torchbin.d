build/common/torchbin.o: common/torchbin.c common/tensorfile.h \
 common/dm_error.h
common/tensorfile.h:
common/dm_error.h:
