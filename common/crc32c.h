/* crc32c.h - CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, the
 * checksum of iSCSI, ext4 and SSE4.2's crc32 instruction), used for the
 * checksum each store record carries.  crc32c("123456789") = 0xE3069283. */
#ifndef DM_CRC32C_H
#define DM_CRC32C_H

#include <stddef.h>
#include <stdint.h>

/* Continue a CRC: crc32c(0, a) then crc32c(that, b) = crc32c of a||b. */
uint32_t crc32c(uint32_t crc, const void *buf, size_t n);

#endif
