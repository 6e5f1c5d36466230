// Canonical Huffman decoding of a .sdc stream (sigdl/core/huffman.py's format: codes MSB
// first, back to back) on the GPU, by self-synchronizing segments (Weissenberger & Schmidt,
// "Massively parallel Huffman decoding on GPUs", ICPP 2018):
//   1. decode_segments: thread t decodes from starts[t] until it passes bit (t + 1) * seg,
//      recording where it stopped and how many codes it read. starts[t] begins as a guess
//      (t * seg, maybe inside a code); the host sets starts[t + 1] = exits[t] and repeats
//      until nothing moves. Huffman codes resynchronize within a few codes, so that takes a
//      few rounds (at most one per segment).
//   2. write_symbols: with the exact starts and the prefix sum of the counts, each thread
//      decodes its segment again and writes its symbols in place.
// Tables (built on the host from the code lengths): limit[l - 1] = first window (max_len
// bits) that has a code longer than l; first/offset per length; symbols in canonical order.
// `data` carries four zero bytes after the stream so that a 32-bit window may start anywhere.

__device__ __forceinline__ unsigned int window(const unsigned char* data, long long pos,
                                               int max_len) {
    long long byte = pos >> 3;
    unsigned int word = ((unsigned int)data[byte] << 24) | ((unsigned int)data[byte + 1] << 16) |
                        ((unsigned int)data[byte + 2] << 8) | (unsigned int)data[byte + 3];
    return (word << (pos & 7)) >> (32 - max_len);
}

__device__ __forceinline__ int code_length(unsigned int w, const unsigned int* limit,
                                           int max_len) {
    for (int l = 1; l <= max_len; ++l) {
        if (w < limit[l - 1]) return l;
    }
    return 0;  // not a code (an incomplete table): the stream is invalid here
}

extern "C" __global__ void decode_segments(const unsigned char* data, long long nbits,
                                           const unsigned int* limit, int max_len, long long seg,
                                           const long long* starts, long long* exits,
                                           long long* counts, int segments) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= segments) return;
    long long pos = starts[t], end = (t + 1) * seg, count = 0;
    while (pos < end && pos < nbits) {
        int len = code_length(window(data, pos, max_len), limit, max_len);
        if (len == 0) break;
        pos += len;
        ++count;
    }
    exits[t] = pos;
    counts[t] = count;
}

extern "C" __global__ void write_symbols(const unsigned char* data, long long nbits,
                                         const unsigned int* limit, const int* first,
                                         const int* offset, const int* symbols, int max_len,
                                         long long seg, const long long* starts,
                                         const long long* out_offsets, int* out, int segments) {
    int t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= segments) return;
    long long pos = starts[t], end = (t + 1) * seg, i = out_offsets[t];
    while (pos < end && pos < nbits) {
        unsigned int w = window(data, pos, max_len);
        int len = code_length(w, limit, max_len);
        if (len == 0) break;
        int code = (int)(w >> (max_len - len));
        out[i++] = symbols[offset[len] + code - first[len]];
        pos += len;
    }
}
