// Interference of circular waves from 2-6 point sources (Young's experiment in a ripple tank).
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 uv = fragCoord / iResolution.y;
    int sources = 2 + int(iParams[0].x * 4.999);
    float k = 20.0 + 80.0 * iParams[0].y;
    float v = 0.0;
    for (int i = 0; i < 6; i++) {
        if (i >= sources) break;
        vec2 s = kd_hash22(vec2(float(i), iTime)) * 1.4 - 0.2;
        v += sin(k * length(uv - s) - iTime * 3.0);
    }
    v /= float(sources);
    vec3 col = kd_palette(0.5 + 0.5 * v * (1.0 + 2.0 * iParams[0].z));
    fragColor = vec4(col * (0.5 + 0.5 * abs(v)), 1.0);
}
