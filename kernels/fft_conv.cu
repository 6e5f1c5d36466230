// The frequency-domain half of FFT convolution: at every frequency f, the output spectrum of
// image n and output channel o is the sum over input channels of X[f, n, c] * W[f, c, o]
// (cuFFT, through cupy.fft, does the transforms on both sides).
// Complex numbers are float2 (re, im), as cupy's complex64. One thread per (f, n, o).
// Launch: block 256, grid ceil(F * N * O / 256).

extern "C" __global__ void spectral_mac(const float2* __restrict__ x,  // (F, N, C)
                                        const float2* __restrict__ w,  // (F, C, O)
                                        float2* __restrict__ y,        // (F, N, O)
                                        long long freqs, int n_images, int channels,
                                        int outputs) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = freqs * n_images * outputs;
    if (i >= total) return;
    int o = (int)(i % outputs);
    int n = (int)((i / outputs) % n_images);
    long long f = i / ((long long)outputs * n_images);
    const float2* xf = x + (f * n_images + n) * channels;
    const float2* wf = w + f * channels * outputs + o;
    float re = 0.0f, im = 0.0f;
    for (int c = 0; c < channels; ++c) {
        float2 a = xf[c], b = wf[(long long)c * outputs];
        re += a.x * b.x - a.y * b.y;
        im += a.x * b.y + a.y * b.x;
    }
    y[i] = make_float2(re, im);
}
