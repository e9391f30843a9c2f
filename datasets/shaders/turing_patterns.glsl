// Turing-like reaction-diffusion patterns: a band-limited random field (sum of plane waves of one
// wavelength, the dominant mode of a Turing instability) thresholded into spots or labyrinths.
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = fragCoord / iResolution.y * (15.0 + 30.0 * iParams[0].x);
    p += 2.0 * vec2(kd_fbm(p * 0.1, 3), kd_fbm(p * 0.1 + 7.0, 3));
    float v = 0.0;
    for (int k = 0; k < 9; k++) {
        float a = 6.2831 * kd_hash11(float(k) + iTime);
        v += cos(dot(p, vec2(cos(a), sin(a))) + 6.2831 * kd_hash11(float(k) * 3.1 + iTime));
    }
    v /= 3.0;
    float threshold = (iParams[0].y - 0.5) * 1.2;
    float m = smoothstep(threshold - 0.15, threshold + 0.15, v);
    fragColor = vec4(mix(kd_palette(0.0) * 0.3, kd_palette(0.5 + 0.5 * iParams[0].z), m), 1.0);
}
