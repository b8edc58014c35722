/*
 * debugexit: ends the test VM with a status the host can read.
 *
 * qemu's isa-debug-exit device (-device isa-debug-exit,iobase=0xf4,iosize=0x04) makes qemu exit
 * with status (value << 1) | 1 when the guest writes `value` to its I/O port. The Debian cloud
 * kernel is built without /dev/port (CONFIG_DEVPORT is not set), so no shell tool can reach the
 * port: this static helper does the outb itself. Compiled on the host by the harness
 * (tests/src/vm.rs) with `gcc -static`, since the initramfs carries no compiler.
 *
 * Usage: debugexit RC (0-127; qemu then exits with 2*RC+1).
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/io.h>

int main(int argc, char **argv)
{
	int rc = argc > 1 ? atoi(argv[1]) : 0;

	/* ioperm needs CAP_SYS_RAWIO: fine, init runs as root. */
	if (ioperm(0xf4, 4, 1) != 0) {
		perror("debugexit: ioperm(0xf4)");
		return 1;
	}
	outb((unsigned char)(rc & 0x7f), 0xf4);
	/* Only reached when the machine has no isa-debug-exit device. */
	fprintf(stderr, "debugexit: the write to port 0xf4 did not stop the machine\n");
	return 1;
}
