// Marble: sine veins displaced by turbulence (Perlin 1985, "An Image Synthesizer").
void mainImage(out vec4 fragColor, in vec2 fragCoord) {
    vec2 p = kd_rot(6.2831 * iParams[0].x) * fragCoord / iResolution.y * (2.0 + 4.0 * iParams[0].y) + iTime;
    float turbulence = 0.0;
    float amp = 1.0;
    vec2 q = p;
    for (int i = 0; i < 5; i++) { turbulence += amp * abs(kd_noise(q) - 0.5); q *= 2.0; amp *= 0.5; }
    float v = 0.5 + 0.5 * sin(p.x * (3.0 + 6.0 * iParams[0].z) + (4.0 + 12.0 * iParams[0].w) * turbulence);
    v = pow(v, 0.4);
    fragColor = vec4(mix(kd_palette(0.05) * 0.3, vec3(0.95) * kd_palette(0.7) * 0.3 + 0.7, v), 1.0);
}
