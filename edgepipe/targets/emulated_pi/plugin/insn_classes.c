/*
 * edgepipe's instruction-class counter: a QEMU TCG plugin for qemu-aarch64 (user mode).
 *
 * Each guest instruction is put in one class when its translation block is translated, from its A64
 * encoding alone (the top-level op0 field, then the load/store and SIMD&FP groups as QEMU 7.2's own
 * decoder splits them). Every execution of a block then adds the block's per-class totals to the
 * counters of the vCPU that ran it; in user mode a vCPU is a guest thread, so the counts come out per
 * thread. The classes are those that cost differently on an out-of-order Cortex-A core (issue #31):
 * vector FP multiply(-accumulate), int8 dot products, integer multiply(-accumulate) and widening
 * multiplies, other vector work, vector and scalar loads/stores, scalar ALU, branches.
 *
 * Arguments (-plugin insn_classes.so,out=FILE,mode=cb|inline,mnemonics=on):
 *   out=FILE      write the counts as JSON to FILE at exit (default: QEMU's log, i.e. stderr)
 *   mode=cb       a callback per executed block, counts per vCPU (default)
 *   mode=inline   inline adds to one set of counters: faster, but not per thread and racy with threads
 *   mnemonics=on  also count executed (mnemonic, class) pairs from QEMU's disassembler: slow; it checks
 *                 the encoding classifier and shows which kernels ran (SMLAL or SDOT). QEMU 7.2's
 *                 disassembler prints SDOT as ".byte": such words are keyed "raw:<word without its
 *                 register fields>" instead, which is also why classes come from encodings, not text
 *
 * Written against the plugin API of QEMU 7.2 (QEMU_PLUGIN_VERSION 1). The few API calls used are
 * declared below rather than taken from QEMU's header, so the plugin builds with nothing but a C
 * compiler; building with -include <qemu-plugin.h> checks the declarations against the real header.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXPORT __attribute__((visibility("default")))

#ifndef QEMU_QEMU_PLUGIN_H /* the real header was not force-included: declare the types it defines */
typedef uint64_t qemu_plugin_id_t;
struct qemu_plugin_tb;
struct qemu_plugin_insn;
typedef struct qemu_info_t {
    const char *target_name;
    struct {
        int min;
        int cur;
    } version;
    bool system_emulation;
    union {
        struct {
            int smp_vcpus;
            int max_vcpus;
        } system;
    };
} qemu_info_t;
enum qemu_plugin_cb_flags { QEMU_PLUGIN_CB_NO_REGS, QEMU_PLUGIN_CB_R_REGS, QEMU_PLUGIN_CB_RW_REGS };
enum qemu_plugin_op { QEMU_PLUGIN_INLINE_ADD_U64 };
typedef void (*qemu_plugin_udata_cb_t)(qemu_plugin_id_t id, void *userdata);
typedef void (*qemu_plugin_vcpu_udata_cb_t)(unsigned int vcpu_index, void *userdata);
typedef void (*qemu_plugin_vcpu_tb_trans_cb_t)(qemu_plugin_id_t id, struct qemu_plugin_tb *tb);
#endif

/* The plugin API calls used (QEMU 7.2 signatures; compatible redeclarations if the header is included). */
void qemu_plugin_register_vcpu_tb_trans_cb(qemu_plugin_id_t id, qemu_plugin_vcpu_tb_trans_cb_t cb);
void qemu_plugin_register_vcpu_tb_exec_cb(struct qemu_plugin_tb *tb, qemu_plugin_vcpu_udata_cb_t cb,
                                          enum qemu_plugin_cb_flags flags, void *userdata);
void qemu_plugin_register_vcpu_tb_exec_inline(struct qemu_plugin_tb *tb, enum qemu_plugin_op op, void *ptr,
                                              uint64_t imm);
size_t qemu_plugin_tb_n_insns(const struct qemu_plugin_tb *tb);
struct qemu_plugin_insn *qemu_plugin_tb_get_insn(const struct qemu_plugin_tb *tb, size_t idx);
const void *qemu_plugin_insn_data(const struct qemu_plugin_insn *insn);
size_t qemu_plugin_insn_size(const struct qemu_plugin_insn *insn);
char *qemu_plugin_insn_disas(const struct qemu_plugin_insn *insn);
void qemu_plugin_register_atexit_cb(qemu_plugin_id_t id, qemu_plugin_udata_cb_t cb, void *userdata);
void qemu_plugin_outs(const char *string);

EXPORT int qemu_plugin_version = 1;

enum {
    C_VFMA_F32,   /* vector FMLA/FMLS/FMUL/FMULX, f32 (and f64) lanes, incl. by element */
    C_VFMA_F16,   /* the same on f16 lanes */
    C_VDOT_I8,    /* SDOT/UDOT/USDOT/SUDOT, SMMLA/UMMLA/USMMLA */
    C_VMLA_INT,   /* integer vector MUL/MLA/MLS, SMULL/UMULL/SMLAL/UMLAL/SMLSL/UMLSL, SADALP/UADALP */
    C_VEC_OTHER,  /* every other Advanced SIMD instruction (incl. AdvSIMD scalar forms, crypto) */
    C_FP_SCALAR,  /* scalar floating point: arithmetic, FMADD, conversions, FMOV, compares */
    C_VEC_LOAD,   /* loads into SIMD&FP registers (LDR q/d/s, LDP q, LD1..LD4, LD1R...) */
    C_VEC_STORE,  /* stores from SIMD&FP registers */
    C_LOAD,       /* loads into general registers (and atomics) */
    C_STORE,      /* stores from general registers */
    C_PREFETCH,   /* PRFM, PRFUM */
    C_ALU,        /* data processing, immediate and register (incl. MADD, shifts, CSEL) */
    C_BRANCH,     /* B, BL, B.cond, CBZ, TBZ, BR, BLR, RET */
    C_SYSTEM,     /* SVC, hints (NOP), barriers, MRS/MSR */
    C_OTHER,      /* unallocated, SVE, SME */
    N_CLASSES
};

static const char *const CLASS_NAMES[N_CLASSES] = {
    "vfma_f32", "vfma_f16", "vdot_i8", "vmla_int", "vec_other", "fp_scalar", "vec_load", "vec_store",
    "load", "store", "prefetch", "alu", "branch", "system", "other",
};

static inline uint32_t bits(uint32_t w, int lo, int n) { return (w >> lo) & ((1u << n) - 1); }

/* One Advanced SIMD vector instruction (bit 28 = 0, bit 31 = 0): a multiply class or C_VEC_OTHER.
 * The (pattern, mask) pairs are those of QEMU 7.2's data_proc_simd table (target/arm/translate-a64.c). */
static int classify_simd_vector(uint32_t w)
{
    uint32_t u = bits(w, 29, 1);
    if ((w & 0x9f200400) == 0x0e200400) { /* three same */
        uint32_t op = bits(w, 11, 5), a = bits(w, 23, 1);
        if (op == 0x12 || (op == 0x13 && !u)) return C_VMLA_INT;           /* MLA, MLS; MUL */
        if (op == 0x19 && !u) return C_VFMA_F32;                           /* FMLA, FMLS */
        if (op == 0x1b && (!u || !a)) return C_VFMA_F32;                   /* FMULX; FMUL */
        return C_VEC_OTHER;
    }
    if ((w & 0x9f208400) == 0x0e008400) { /* three same extra */
        uint32_t op = bits(w, 11, 4);
        if (op == 0x2 || op == 0x4 || ((op == 0x3 || op == 0x5) && !u)) return C_VDOT_I8;
        return C_VEC_OTHER;                                                /* SQRDMLAH, FCMLA, ... */
    }
    if ((w & 0x9f200c00) == 0x0e200000) { /* three different */
        uint32_t op = bits(w, 12, 4);
        return (op == 0x8 || op == 0xa || op == 0xc) ? C_VMLA_INT : C_VEC_OTHER; /* [SU]MLAL [SU]MLSL [SU]MULL */
    }
    if ((w & 0x9f3e0c00) == 0x0e200800) /* two-register misc */
        return bits(w, 12, 5) == 0x6 ? C_VMLA_INT : C_VEC_OTHER;           /* SADALP, UADALP */
    if ((w & 0x9f000400) == 0x0f000000) { /* vector x indexed element */
        uint32_t op = bits(w, 12, 4), size = bits(w, 22, 2);
        if ((!u && (op == 0x1 || op == 0x5 || op == 0x9)) || (u && op == 0x9)) /* FMLA FMLS FMUL; FMULX */
            return size == 0 ? C_VFMA_F16 : C_VFMA_F32;
        if ((u && (op == 0x0 || op == 0x4)) || (!u && op == 0x8)) return C_VMLA_INT; /* MLA MLS; MUL */
        if (op == 0x2 || op == 0x6 || op == 0xa) return C_VMLA_INT;        /* [SU]MLAL [SU]MLSL [SU]MULL */
        if (op == 0xe || (op == 0xf && !u)) return C_VDOT_I8;              /* SDOT UDOT; SUDOT USDOT */
        return C_VEC_OTHER;
    }
    if ((w & 0x9f60c400) == 0x0e400400) { /* three same (FP16) */
        uint32_t op = bits(w, 11, 3), a = bits(w, 23, 1);
        if ((op == 0x1 && !u) || (op == 0x3 && (!u || !a))) return C_VFMA_F16; /* FMLA FMLS; FMULX FMUL */
        return C_VEC_OTHER;
    }
    return C_VEC_OTHER;
}

/* Loads and stores (op0 = x1x0): SIMD&FP or general register, load or store, prefetch. */
static int classify_ldst(uint32_t w)
{
    bool vector = bits(w, 26, 1);
    bool load;
    if (bits(w, 27, 3) == 0x7 && !bits(w, 25, 1)) { /* load/store register, all forms */
        uint32_t opc = bits(w, 22, 2), size = bits(w, 30, 2);
        bool atomic = !bits(w, 24, 1) && bits(w, 21, 1) && bits(w, 10, 2) == 0;
        if (vector) {
            load = opc & 1;
        } else {
            if (size == 3 && opc == 2 && !atomic) return C_PREFETCH;
            load = opc != 0 || atomic;
        }
    } else if (bits(w, 27, 3) == 0x3 && bits(w, 24, 2) == 0) { /* load register (literal) */
        if (!vector && bits(w, 30, 2) == 3) return C_PREFETCH;
        load = true;
    } else if (bits(w, 24, 6) == 0x19) { /* LDAPR/STLUR, memory tags */
        load = bits(w, 22, 2) != 0;
    } else { /* pairs, exclusives, SIMD structures: L is bit 22 */
        load = bits(w, 22, 1);
    }
    if (vector) return load ? C_VEC_LOAD : C_VEC_STORE;
    return load ? C_LOAD : C_STORE;
}

/* One A64 instruction word -> its class. */
static int classify(uint32_t w)
{
    switch (bits(w, 25, 4)) {
    case 0x8: case 0x9: /* data processing, immediate */
    case 0x5: case 0xd: /* data processing, register */
        return C_ALU;
    case 0xa: case 0xb: /* branches, exception generation, system */
        if ((w & 0xff000000) == 0xd4000000 || (w & 0xffc00000) == 0xd5000000) return C_SYSTEM;
        return C_BRANCH;
    case 0x4: case 0x6: case 0xc: case 0xe:
        return classify_ldst(w);
    case 0x7: case 0xf: /* SIMD and floating point */
        if (bits(w, 28, 1) && !bits(w, 30, 1)) return C_FP_SCALAR;
        if (bits(w, 28, 1) || bits(w, 31, 1)) return C_VEC_OTHER; /* AdvSIMD scalar forms, crypto */
        return classify_simd_vector(w);
    default: /* SME, SVE, unallocated */
        return C_OTHER;
    }
}

/* Counters. In user mode vCPU indexes are guest threads, reused after a thread exits. */
#define MAX_VCPUS 256
static uint64_t per_vcpu[MAX_VCPUS][N_CLASSES];
static uint64_t overflow[N_CLASSES]; /* vCPUs past MAX_VCPUS, added atomically */
static uint64_t inline_counts[N_CLASSES];
static uint64_t translated_tbs, translated_insns, odd_size_insns;
static bool inline_mode, with_mnemonics;
static const char *out_path;

/* (mnemonic, class) pairs, interned at translation time (under QEMU's translation lock). */
#define MAX_KEYS 4096
static char *key_names[MAX_KEYS];
static uint64_t key_counts[MAX_KEYS];
static unsigned n_keys;

static unsigned intern(const char *disas, uint32_t w, int cls)
{
    char name[48];
    size_t n = strcspn(disas, " \t");
    if (n > 31) n = 31;
    if (disas[0] == '.' || disas[0] == '?') /* the disassembler does not know it (QEMU 7.2: SDOT): */
        snprintf(name, sizeof name, "raw:%08x/%s", w & 0xffe0fc00u, CLASS_NAMES[cls]); /* no Rd Rn Rm */
    else
        snprintf(name, sizeof name, "%.*s/%s", (int)n, disas, CLASS_NAMES[cls]);
    for (unsigned i = 0; i < n_keys; i++)
        if (strcmp(key_names[i], name) == 0) return i;
    if (n_keys == MAX_KEYS - 1) return MAX_KEYS - 1; /* the last key collects the rest */
    key_names[n_keys] = strdup(name);
    return n_keys++;
}

/* What one translated block adds per execution: its non-zero classes, then its (mnemonic, class) keys. */
struct block {
    uint16_t n_classes, n_keys;
    struct { uint16_t id; uint16_t n; } e[];
};

static void on_block_exec(unsigned int vcpu, void *udata)
{
    const struct block *b = udata;
    if (vcpu < MAX_VCPUS) {
        for (unsigned i = 0; i < b->n_classes; i++) per_vcpu[vcpu][b->e[i].id] += b->e[i].n;
    } else {
        for (unsigned i = 0; i < b->n_classes; i++)
            __atomic_fetch_add(&overflow[b->e[i].id], b->e[i].n, __ATOMIC_RELAXED);
    }
    for (unsigned i = b->n_classes; i < b->n_classes + b->n_keys; i++)
        __atomic_fetch_add(&key_counts[b->e[i].id], b->e[i].n, __ATOMIC_RELAXED);
}

static void on_block_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    uint16_t per_class[N_CLASSES] = {0};
    uint16_t *key_of = with_mnemonics ? calloc(n ? n : 1, sizeof *key_of) : NULL;
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        int cls = C_OTHER;
        uint32_t w = 0;
        if (qemu_plugin_insn_size(insn) == 4) {
            memcpy(&w, qemu_plugin_insn_data(insn), 4); /* A64 is little-endian, as is the host */
            cls = classify(w);
        } else {
            odd_size_insns++;
        }
        per_class[cls]++;
        if (key_of) {
            char *d = qemu_plugin_insn_disas(insn);
            key_of[i] = (uint16_t)intern(d ? d : "?", w, cls);
            free(d); /* g_free: glib allocates with malloc */
        }
    }
    translated_tbs++;
    translated_insns += n;
    if (inline_mode) {
        for (int c = 0; c < N_CLASSES; c++)
            if (per_class[c])
                qemu_plugin_register_vcpu_tb_exec_inline(tb, QEMU_PLUGIN_INLINE_ADD_U64, &inline_counts[c],
                                                         per_class[c]);
        free(key_of); /* mnemonics with inline counts: the keys are interned, this block's list is not kept */
        return;
    }
    unsigned nc = 0, nk = 0;
    for (int c = 0; c < N_CLASSES; c++) nc += per_class[c] != 0;
    uint16_t *key_n = NULL;
    if (key_of) { /* distinct keys of this block, with how often each occurs in it */
        key_n = calloc(MAX_KEYS, sizeof *key_n);
        for (size_t i = 0; i < n; i++) nk += key_n[key_of[i]]++ == 0;
    }
    struct block *b = malloc(sizeof *b + (nc + nk) * sizeof b->e[0]);
    b->n_classes = nc;
    b->n_keys = nk;
    unsigned j = 0;
    for (int c = 0; c < N_CLASSES; c++)
        if (per_class[c]) b->e[j].id = c, b->e[j++].n = per_class[c];
    for (size_t i = 0; key_n && i < n; i++)
        if (key_n[key_of[i]]) b->e[j].id = key_of[i], b->e[j++].n = key_n[key_of[i]], key_n[key_of[i]] = 0;
    free(key_n);
    free(key_of);
    /* blocks are never freed: a user-mode run translates each block once or a few times */
    qemu_plugin_register_vcpu_tb_exec_cb(tb, on_block_exec, QEMU_PLUGIN_CB_NO_REGS, b);
}

static void print_counts(FILE *f, const uint64_t *c)
{
    fputc('[', f);
    for (int i = 0; i < N_CLASSES; i++) fprintf(f, "%s%llu", i ? ", " : "", (unsigned long long)c[i]);
    fputc(']', f);
}

static void on_exit_write(qemu_plugin_id_t id, void *udata)
{
    (void)id, (void)udata;
    char *buf = NULL;
    size_t len = 0;
    FILE *f = out_path ? fopen(out_path, "w") : open_memstream(&buf, &len);
    if (!f) {
        qemu_plugin_outs("insn_classes: cannot open the out= file\n");
        return;
    }
    fprintf(f, "{\"plugin\": \"edgepipe-insn-classes\", \"format\": 1, \"mode\": \"%s\",\n \"classes\": [",
            inline_mode ? "inline" : "cb");
    for (int i = 0; i < N_CLASSES; i++) fprintf(f, "%s\"%s\"", i ? ", " : "", CLASS_NAMES[i]);
    fprintf(f, "],\n \"translated_blocks\": %llu, \"translated_insns\": %llu, \"odd_size_insns\": %llu,\n",
            (unsigned long long)translated_tbs, (unsigned long long)translated_insns,
            (unsigned long long)odd_size_insns);
    fputs(" \"threads\": {", f);
    bool first = true;
    if (inline_mode) {
        fputs("\"all\": ", f);
        print_counts(f, inline_counts);
    } else {
        for (int v = 0; v <= MAX_VCPUS; v++) {
            const uint64_t *c = v < MAX_VCPUS ? per_vcpu[v] : overflow;
            uint64_t sum = 0;
            for (int i = 0; i < N_CLASSES; i++) sum += c[i];
            if (!sum) continue;
            if (v < MAX_VCPUS) fprintf(f, "%s\"%d\": ", first ? "" : ",\n  ", v);
            else fprintf(f, "%s\"overflow\": ", first ? "" : ",\n  ");
            print_counts(f, c);
            first = false;
        }
    }
    fputs("},\n \"mnemonics\": {", f);
    for (unsigned i = 0; i < n_keys; i++)
        fprintf(f, "%s\"%s\": %llu", i ? ",\n  " : "", key_names[i], (unsigned long long)key_counts[i]);
    fputs("}}\n", f);
    fclose(f);
    if (!out_path) {
        qemu_plugin_outs(buf);
        free(buf);
    }
}

EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    if (strcmp(info->target_name, "aarch64") != 0) {
        qemu_plugin_outs("insn_classes: only decodes aarch64 guests\n");
        return -1;
    }
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (strncmp(a, "out=", 4) == 0) out_path = a + 4;
        else if (strcmp(a, "mode=inline") == 0) inline_mode = true;
        else if (strcmp(a, "mode=cb") == 0) inline_mode = false;
        else if (strcmp(a, "mnemonics=on") == 0) with_mnemonics = true;
        else if (strcmp(a, "mnemonics=off") == 0) with_mnemonics = false;
        else {
            fprintf(stderr, "insn_classes: unknown argument %s (out=FILE, mode=cb|inline, mnemonics=on|off)\n", a);
            return -1;
        }
    }
    if (inline_mode && with_mnemonics) {
        fprintf(stderr, "insn_classes: mnemonics=on needs mode=cb\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_block_translate);
    qemu_plugin_register_atexit_cb(id, on_exit_write, NULL);
    return 0;
}
