build/common/safetensors.o: common/safetensors.c common/tensorfile.h \
 common/dm_error.h
common/tensorfile.h:
common/dm_error.h:
