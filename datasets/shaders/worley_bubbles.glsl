// Worley (1996) F1 distance at two scales: soft bubbly, foam-like shading.
float f1(vec2 p) {
    vec2 g = floor(p); vec2 f = fract(p); float d = 8.0;
    for (int j = -1; j <= 1; j++) for (int i = -1; i <= 1; i++) {
        vec2 o = vec2(float(i), float(j));
        vec2 r = o + kd_hash22(g + o) - f;
        d = min(d, dot(r, r));
    }
    return sqrt(d);
}
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.y * (2.0 + 6.0 * iParams[0].x) + iMouse.xy * 0.05;
    float v = f1(uv + 0.2 * iTime) * (0.6 + 0.4 * iParams[0].y) + 0.5 * f1(uv * 2.7 - 0.1 * iTime);
    v = pow(clamp(v, 0.0, 1.0), 0.5 + 2.0 * iParams[0].z);
    fragColor = vec4(mix(kd_palette(0.1), kd_palette(0.6 + 0.4 * iParams[0].w), v), 1.0);
}
