/* jsonschema.h - a small JSON Schema validator for docmint's own schemas
 * (the schemas/NAME.json files, embedded in the binary).
 *
 * Supported keywords: type (one name or a list: object, array, string,
 * integer, number, boolean, null), properties, required,
 * additionalProperties (false or a schema), items, enum, const, minimum,
 * maximum, exclusiveMinimum, exclusiveMaximum, minLength, maxLength,
 * minItems, maxItems, oneOf, default; the annotations $schema, $id, title,
 * description and examples are ignored.  Any other keyword is reported as
 * an error, so a schema never silently fails to enforce what it says.
 *
 * Errors are one line starting with the key path of the offending value:
 * `corpus.format: expected one of "docvqa", "jsonl", "archive", got "xml"`,
 * `items[2].name: expected string, got integer`, `corpus.path: missing
 * (required string)`.  The document root is `(top level)`. */
#ifndef DM_JSONSCHEMA_H
#define DM_JSONSCHEMA_H

#include <jansson.h>
#include <stddef.h>

#include "common/dm_error.h"

/* Validate doc against schema.  With fill_defaults, absent properties
 * whose schema has a "default" are added to doc (a copy of the default),
 * at every level that is present.  Returns 0 or -1 with err set. */
/* The JSON Schema type name of a value ("object", "integer", ...). */
const char *jsonschema_type_name(const json_t *v);

int jsonschema_validate(const json_t *schema, json_t *doc, int fill_defaults, DmErr *err);

/* The schemas of schemas/ as embedded at build time: the text of
 * schemas/NAME (e.g. "job.schema.json"), NUL-terminated, or NULL. */
const char *jsonschema_embedded(const char *name, size_t *len);

/* Parse an embedded schema (cached after the first call; never freed). */
const json_t *jsonschema_get(const char *name, DmErr *err);

/* The table the build generates from the schemas' JSON files
 * (build/gen/schemas_embed.c, by schemas/embed.sh). */
typedef struct DmEmbeddedFile {
    const char *name;
    const unsigned char *data;
    size_t len;
} DmEmbeddedFile;
extern const DmEmbeddedFile dm_embedded_schemas[];

#endif
