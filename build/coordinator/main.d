build/coordinator/main.o: coordinator/main.c coordinator/commands.h
coordinator/commands.h:
